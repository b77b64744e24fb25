"""A README walk-through as the tests run it verbatim: the shell blocks of one section,
ports swapped for the test's, each run with bash once the service is ready for it."""

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from support import eventually

ROOT = Path(__file__).resolve().parents[1]


def section_blocks(heading: str, service_port: int, crm_port: int) -> list[str]:
    """The shell blocks of the README's section `## {heading}`, ports swapped."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {heading}\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    return [
        block.replace("localhost:8080", f"localhost:{service_port}").replace(
            "localhost:8081", f"localhost:{crm_port}"
        )
        for block in re.findall(r"```sh\n(.*?)```", section, re.S)
    ]


async def run_blocks(blocks: list[str], ready: Callable[[], Awaitable[bool]]) -> list[str]:
    """Each block's output, run with `bash -euo pipefail` once `ready` (each must exit 0)."""
    outputs: list[str] = []
    for block in blocks:
        await eventually(ready)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            block,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        outputs.append(out.decode())
        assert process.returncode == 0, f"{block}\n---\n{outputs[-1]}"
    return outputs
