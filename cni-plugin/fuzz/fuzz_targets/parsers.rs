//! Everything the plugin parses from outside: the network config on stdin, a CNI result
//! (delegated IPAM output, prevResult), IPAM store files and the subnet file.
//! Run: `cd cni-plugin/fuzz && cargo fuzz run -s none parsers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = twill_cni::config::NetConf::parse(data) {
        let _ = conf.runtime_ip();
        let _ = conf.gc_keep();
        let _ = twill_cni::version::negotiate(&conf.cni_version, &conf.cni_versions);
    }
    let _ = twill_cni::version::version_answer(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = twill_cni::result::AddResult::from_json(&v);
    }
    let text = String::from_utf8_lossy(data);
    let _ = twill_cni::ipam::store::parse_owner(&text);
    let _ = twill_netkit::subnet_env::SubnetEnv::parse(&text);
});
