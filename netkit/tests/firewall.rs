//! nftables batches applied in a namespace of the test's own.

mod common;

use common::{TestNs, root_or_skip};
use twill_netkit::firewall::{Chain, Family, Rule, Table};

#[test]
fn a_rule_cannot_reach_outside_its_table() {
    if !root_or_skip("a_rule_cannot_reach_outside_its_table") {
        return;
    }
    let t = TestNs::new("fwinj");
    let other = Table::new(Family::Ip, "other");
    other
        .apply_in(&t.ns)
        .expect("creating another owner's table");
    let mut ours = Table::new(Family::Inet, "twill");
    ours.chains.push(Chain {
        name: "c".into(),
        hook: None,
        // An open quote swallows the rendered ` comment "`; the comment's text would follow as
        // statements of the script.
        rules: vec![Rule::new(
            "counter comment \"",
            "; } ; } ; delete table ip other ; table ip x { chain y { #",
        )],
    });
    let applied = ours.apply_in(&t.ns);
    let listed =
        t.ns.enter(|| twill_netkit::firewall::list_table(Family::Ip, "other"));
    listed
        .expect("entering the namespace")
        .expect("the other table was deleted by a rule of ours");
    assert!(applied.is_err(), "the batch was applied");
}
