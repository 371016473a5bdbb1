"""BFD (RFC 5880 asynchronous mode, RFC 5881 single hop) for the LAN BGP sessions (issue 17).

* ``codec.py``    the control packet (RFC 5880 4.1): encode, decode; every receive check of
  6.8.6 that needs only the packet is a :class:`~cgwd.bfd.codec.BfdDrop` with a named reason.
* ``session.py``  sans-IO: one session's state machine (AdminDown/Down/Init/Up, a transition
  table), the timer negotiation (6.8.2-6.8.4: slow TX while not Up, poll/final, jitter,
  detection time) and one schedule of deadlines. Bytes + ``now`` in; packets and events out.
* ``transport.py`` asyncio: UDP 3784 (TTL/hop limit 255 sent and required), one receive
  socket per local address shared by the sessions on it, one send socket per session
  (source port 49152-65535); the session's timer on the event loop.

Left out (say so in status/docs): echo mode, demand mode, authentication (a packet with the
A bit is dropped, counted "auth_not_configured").
"""
