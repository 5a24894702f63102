"""The floor under `hpcscale serve`'s idle memory: the field's stack with none of hpcscale's code.

    python bench/footprint_floor_app.py PORT DATABASE_URL

bench/footprint.py runs this beside the real serve and measures it the same way (VmRSS after
/healthz answers and the same settle time). It holds what any service built on the dependencies
chosen for the field holds: a FastAPI app with one pydantic model as body and response, an
SQLAlchemy Core table on SQLite read by a route, a prometheus-client counter on /metrics, an httpx
client with tenacity's retry asking /healthz every 2 s (as serve's manager asks its server), served
by uvicorn with uvloop and httptools. What serve holds above this is hpcscale's own; below it no
code of ours can go without leaving that stack. It keeps out the two imports serve keeps out
(hpcscale/lean_imports.py: httpx's command line, pydantic.v1), so the floor is the stack at its
leanest.
"""

from __future__ import annotations

# ruff: noqa: E402  (the two imports kept out must be kept out before the stack is imported)
import sys
import threading
import time

sys.modules["httpx._main"] = None  # type: ignore[assignment]
sys.modules["pydantic.v1"] = None  # type: ignore[assignment]

import httpx
import prometheus_client
import sqlalchemy as sa
import tenacity
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel

METADATA = sa.MetaData()
TASKS = sa.Table(
    "tasks",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("command", sa.Text, nullable=False),
)
SUBMITTED = prometheus_client.Counter("floor_tasks_submitted", "tasks submitted")


class Task(BaseModel):
    command: str


class Created(BaseModel):
    id: int


def app_for(engine: sa.Engine) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, int]:
        with engine.connect() as db:
            return {"tasks": db.execute(sa.select(sa.func.count()).select_from(TASKS)).scalar_one()}

    @app.post("/tasks")
    def submit(task: Task) -> Created:
        with engine.begin() as db:
            insert = sa.insert(TASKS).values(command=task.command).returning(TASKS.c.id)
            new_id = db.execute(insert).scalar_one()
        SUBMITTED.inc()
        return Created(id=new_id)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(prometheus_client.generate_latest(), media_type="text/plain")

    return app


def poll(url: str) -> None:
    """What serve's in-process manager does while idle: ask its server, with retries."""

    @tenacity.retry(wait=tenacity.wait_fixed(0.5), stop=tenacity.stop_after_attempt(20))
    def ask(client: httpx.Client) -> None:
        client.get("/healthz").raise_for_status()

    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            ask(client)
            time.sleep(2)


def main() -> None:
    port, database = int(sys.argv[1]), sys.argv[2]
    engine = sa.create_engine(database)
    METADATA.create_all(engine)
    threading.Thread(target=poll, args=(f"http://127.0.0.1:{port}",), daemon=True).start()
    uvicorn.run(app_for(engine), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
