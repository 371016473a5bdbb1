"""TCP MD5 (RFC 2385) on BGP speaker sockets: the option's layout, and two speakers with the
same key establishing over loopback (the kernel signs and checks every segment)."""
import asyncio
import socket
import struct

import pytest

from cgwd.bgp.md5 import md5_supported, md5sig_option
from cgwd.bgp.session import BgpPeerConfig, BgpSession
from cgwd.bgp.speaker import BgpSpeaker
from loopback_helpers import free_port, wait


def test_the_option_is_linux_struct_tcp_md5sig():
    opt = md5sig_option("10.1.2.3", b"key!")
    assert len(opt) == 128 + 8 + 80
    fam, = struct.unpack_from("=H", opt, 0)
    port, = struct.unpack_from("!H", opt, 2)
    assert (fam, port, opt[4:8]) == (socket.AF_INET, 0, bytes([10, 1, 2, 3]))
    flags, plen, keylen, ifindex = struct.unpack_from("=BBHI", opt, 128)
    assert (flags, plen, keylen, ifindex) == (0, 0, 4, 0) and opt[136:140] == b"key!"
    opt6 = md5sig_option("2001:db8::1", b"k")
    assert struct.unpack_from("=H", opt6, 0)[0] == socket.AF_INET6 and opt6[8:24] == socket.inet_pton(
        socket.AF_INET6, "2001:db8::1")


@pytest.mark.parametrize("key", [b"", b"x" * 81])
def test_a_key_out_of_range_is_refused(key):
    with pytest.raises(ValueError):
        md5sig_option("10.0.0.1", key)


def test_speakers_with_the_same_key_establish():
    if md5_supported("127.0.0.3"):
        pytest.skip(md5_supported("127.0.0.3"))

    async def main():
        port = free_port()
        sa = BgpSession(BgpPeerConfig("127.0.0.2", "127.0.0.3", 65000, 65010, "10.0.0.2", connect_retry=0.3))
        sb = BgpSession(BgpPeerConfig("127.0.0.3", "127.0.0.2", 65010, 65000, "10.0.0.3", connect_retry=0.3))
        a = BgpSpeaker(sa, local_address="127.0.0.2", remote_address="127.0.0.3", port=port, md5_key=b"s3cret")
        b = BgpSpeaker(sb, local_address="127.0.0.3", remote_address="127.0.0.2", port=port, md5_key=b"s3cret")
        await a.start()
        await b.start()
        try:
            await wait(lambda: sa.state == sb.state == "Established", 10)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())
