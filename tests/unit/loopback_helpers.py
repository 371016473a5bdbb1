"""Helpers for unit tests that run asyncio adapters over loopback."""
import asyncio
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait(pred, timeout: float) -> None:
    """Poll ``pred`` every 20 ms until true; AssertionError after ``timeout`` seconds."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("timeout")
        await asyncio.sleep(0.02)
