//! twilld, the per-node agent: leases, watch, backends, subnet.env. Not built yet: see the twilld issue.
