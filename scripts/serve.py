"""Serves a finished work directory over HTTP.

``python scripts/serve.py --config configs/smoke.py --workdir DIR [--policy plan|none|gati-online]
[--port 8000]`` loads DIR's plan and base network (``gati_jax.load_system``), compiles every
group size, and answers ``POST /v1/predict`` (one image or a batch, ``.npy`` bytes or JSON),
``GET /healthz`` and ``GET /metrics`` (Prometheus) until interrupted. Requests are grouped by
the config's ``serving.max_group`` and ``serving.max_wait_ms``; the ``server`` section bounds
the queue and the body (see gati_jax/serve/frontend.py for the protocol).
"""

from absl import flags, logging
from ml_collections import config_flags

from gati_jax import cli
from gati_jax.serve.config import server_section
from gati_jax.serve.engine import load_engine
from gati_jax.serve.frontend import run_server

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "Experiment config.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A finished work directory (its plan).", required=True
)
_POLICY = flags.DEFINE_string(
    "policy",
    None,
    "none, plan (or the plan's policy name) or gati-online (default: server.policy).",
)
_HOST = flags.DEFINE_string("host", None, "Address to listen on (default: server.host).")
_PORT = flags.DEFINE_integer("port", None, "Port (default: server.port).")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    server = server_section(config, policy=_POLICY.value, host=_HOST.value, port=_PORT.value)
    engine = load_engine(_WORKDIR.value, server.policy, config)
    logging.info(
        f"serving {engine.policy} (caches at {list(engine.positions)}) on "
        f"http://{server.host}:{server.port}, groups of up to "
        f"{config.serving.max_group}, max wait {config.serving.max_wait_ms} ms"
    )
    run_server(engine, config.serving, server)


if __name__ == "__main__":
    cli.run(main)
