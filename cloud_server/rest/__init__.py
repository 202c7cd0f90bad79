"""The REST room: everything on the HTTP port, nothing of gRPC.

- ``app.py``: the FastAPI app (:func:`~.app.create_app`): the route table, the error handlers, the guards;
- ``routes.py``: the endpoints (the Open Inference Protocol over HTTP/JSON, the image upload, edge packages) and
  their body converters;
- ``guards.py``: what a request gets through before an endpoint sees it (body limit, shutdown, auth, size and
  admission from the headers, body timeout, cancel on disconnect, the header timeout of uvicorn's protocol), and
  how a refusal is answered.
"""
