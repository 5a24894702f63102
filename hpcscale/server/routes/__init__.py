"""One router per resource of the API, each tagged as its OpenAPI section.

`hpcscale.server.app` includes them in one fixed order: the OpenAPI document lists paths in the
order their first route was registered, and that document is a frozen contract.
"""
