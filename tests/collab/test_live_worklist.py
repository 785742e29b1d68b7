"""A new case is announced on the live stream of the readers it is routed to, and of nobody else."""

from __future__ import annotations

import asyncio
from pathlib import Path

from readingroom.collab import live
from readingroom.governance.auth import principal_for
from readingroom.governance.users import create_user, get_user
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)


def test_new_case_reaches_the_readers_it_is_routed_to(network, tmp_path: Path) -> None:  # noqa: F811
    rt = network
    with rt.db.session() as s:
        create_user(s, "outsider", password="pw", role="consultant")
    with rt.db.read_session() as s:
        people = {name: principal_for(s, get_user(s, name)) for name in ("ann", "bob", "cat", "outsider")}

    async def main() -> tuple[int, dict[str, list[live.LiveEvent]]]:
        subs = {name: live.hub(rt).subscribe(p) for name, p in people.items()}
        case_id = await asyncio.to_thread(make_case, rt, tmp_path)
        await asyncio.sleep(0.2)  # let call_soon_threadsafe deliveries run
        got = {name: [sub.queue.get_nowait() for _ in range(sub.queue.qsize())] for name, sub in subs.items()}
        for sub in subs.values():
            live.hub(rt).unsubscribe(sub)
        return case_id, got

    case_id, got = asyncio.run(main())
    reached = {name for name, events in got.items()
               if any(e is not None and e.kind == "case.new" and e.case_id == case_id for e in events)}
    assert reached, "the new case reached nobody"
    assert reached <= {"ann", "bob", "cat"} and "outsider" not in reached
