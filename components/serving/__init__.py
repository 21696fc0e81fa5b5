"""The reward service: a registered scorer behind Ray Serve (``visual-dpo serve``).

``settings.py`` the typed, validated settings; ``payload.py`` the request and response wire
formats (MLflow's JSON and the compact binary form); ``follower.py`` the model a replica serves
and the registry alias it follows; ``service.py`` the Ray Serve deployment, its HTTP routes,
dynamic batching and metrics, and ``serve_model`` that deploys it. docs/serving.md is the
user's guide.
"""
