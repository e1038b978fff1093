"""Serving over the network: a loaded system behind an HTTP front end, with request grouping,
a bounded queue, online learning off the request path and Prometheus metrics; an async load
generator; and (the optional extra ``serve``) the same system on Ray Serve.

- :mod:`gati_jax.serve.engine`: one policy of a loaded system, ready to route groups;
- :mod:`gati_jax.serve.core`: request grouping and the bounded queue, transport-free;
- :mod:`gati_jax.serve.frontend`: the ASGI application on uvicorn (``/v1/predict``,
  ``/healthz``, ``/metrics``);
- :mod:`gati_jax.serve.client`: the load generator (open and closed loop);
- :mod:`gati_jax.serve.ray_app`: the Ray Serve deployment (needs ``pip install -e .[serve]``).
"""
