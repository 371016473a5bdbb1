"""High availability for a pair of cgwd boxes (issue 17).

* :mod:`cgwd.ha.health`: one verdict from the daemon's status (up, degraded, down,
  unavailable) and its exit status, for keepalived's ``track_script`` and any monitor.
* :mod:`cgwd.ha.config`: the HA file (``/etc/cgwd/ha.toml``), read by ``cgwctl ha`` only.
* :mod:`cgwd.ha.imds`: the EC2 instance metadata service (IMDSv2): region, instance,
  interface, the instance role's credentials.
* :mod:`cgwd.ha.ec2`: the route-table takeover planned as data (which routes to replace or
  create), applied through botocore with counted retries, and the Elastic IP move.
* :mod:`cgwd.ha.notify`: what ``cgwctl ha notify STATE`` does for keepalived's notify hooks.
* :mod:`cgwd.ha.keepalived`: keepalived configurations for both boxes of a pair.
"""
