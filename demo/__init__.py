"""The demo (reledger demo): a year of rare earth flows through the command API; the top of the import graph."""
