//! What twilld reads from etcd (and its UAPI clients' answers): lease keys, lease values and
//! the network config, on arbitrary bytes. Nothing may panic; what parses must survive a round
//! trip through what twilld itself writes (a lease key and value read back equal), and a config
//! must show no differences with itself.
//! Run: `cd agent/fuzz && cargo fuzz run -s none etcd_values`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_agent::backend::wireguard::{config, uapi};
use twill_agent::lease::{LeaseRecord, Subnets};
use twill_agent::netconf::NetworkConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(lease) = LeaseRecord::parse(data) {
        // What twilld writes reads back, and writes the same again (a vxlan lease without
        // a VNI gets Flannel's default, 1, once).
        let json = lease.to_json();
        let again = LeaseRecord::parse(json.as_bytes())
            .unwrap_or_else(|e| panic!("twilld's own lease {json} refused: {e}"));
        assert_eq!(again.to_json(), json);
        assert_eq!(again.public_ip, lease.public_ip);
        assert_eq!(again.wireguard, lease.wireguard);
    }
    let text = String::from_utf8_lossy(data);
    if let Some(subnets) = Subnets::parse_key(&text) {
        let key = subnets.key();
        assert_eq!(Subnets::parse_key(&key), Some(subnets), "key {key}");
        let _ = subnets.to_string();
    }
    if let Ok(cfg) = NetworkConfig::parse(&text) {
        assert!(cfg.differences(&cfg).is_empty());
        for net in cfg.subnets().take(4) {
            let _ = cfg.fits(net);
        }
    }
    if let Ok(key) = config::parse_key(&text) {
        assert_eq!(config::parse_key(&config::format_key(&key)), Ok(key));
    }
    let _ = uapi::parse_get(&text);
});
