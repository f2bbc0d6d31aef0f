"""The service as a process of its own, for the restart tests (``test_restart.py``): the FastAPI app over
``build_service`` with the instant keyword experts, under uvicorn, its store persisted in the data dir given. No
Ray: the store lives in the ingress process either way. SIGTERM stops it as it stops ``aegis-online serve``
(uvicorn's graceful shutdown, then the app's lifespan: ``ModerationService.stop``).

    python -m tests.serve.restart_server DATA_DIR PORT   # from the repository root
"""

from __future__ import annotations

import sys

import uvicorn

from aegis_online.config import ServiceConfig
from aegis_online.serve.app import create_app
from aegis_online.serve.auth import KeyTable
from aegis_online.serve.service import build_service
from tests.serve.helpers import KEYS, default_experts


def main(data_dir: str, port: int) -> None:
    config = ServiceConfig.model_validate({"limits": {"deadline_ms": 2000}, "store": {"data_dir": data_dir}})
    service = build_service(config, default_experts(), KeyTable.from_keys(KEYS))
    uvicorn.run(create_app(service), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
