//! The twill CNI plugin (binary `twill`): CNI commands, config, IPAM, bridge/veth setup. Not built yet: see the CNI plugin issue.
