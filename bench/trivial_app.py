"""The trivial endpoint the HTTP benchmark compares the ledger's server with: the same
framework (FastAPI on uvicorn), the same process settings as ``reledger serve``
(``reledger.commands.server.serve``: one process, log level warning, no access log), and a POST that
reads the body and answers ``{}``.

Run: ``python -m reledger.bench.trivial_app PORT``.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI(title="trivial")


@app.post("/v1/entries", status_code=201)
async def entries(request: Request):
    await request.body()
    return {}


@app.get("/v1/health")
def health():
    return {}


def main(argv: list[str]) -> None:
    uvicorn.run(app, host="127.0.0.1", port=int(argv[0]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
