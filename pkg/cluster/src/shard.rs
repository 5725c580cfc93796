//! Which instance owns a device or an application: rendezvous (highest random weight) hashing.
//!
//! Each candidate gets a score for a key, `SipHash-2-4(K, len(key) as u32 big-endian ‖ key ‖
//! instance ID)` with the fixed 128-bit key `K` below; the candidate with the highest score owns
//! the key (ties, which need a 64-bit collision, go to the greater instance ID). So:
//!
//! - every process computes the same owner from the same live set, without coordination;
//! - when an instance leaves, only its keys move (each to its runner-up); when one joins, only
//!   the keys it now wins move, all to it;
//! - keys spread evenly, as SipHash output is uniform.
//!
//! **Stability**: the scores depend only on SipHash-2-4 (a fixed algorithm, not Rust's
//! `DefaultHasher`, whose algorithm may change), the key `K` and the byte layouts documented
//! on the helpers. Changing any of them moves every device at a rolling upgrade, so they must
//! never change; a test pins known scores.

use std::hash::Hasher;

use lorawan::{DevAddr, Eui64};
use siphasher::sip::SipHasher24;

use crate::directory::{Peer, PeerDirectory, PeerRole};

/// The fixed SipHash key `(k0, k1)`: the ASCII of `"tern ren"` and `"dezvous1"`, each read as
/// a big-endian `u64`. Never change it (see the module documentation).
const SIP_KEY: (u64, u64) = (
    u64::from_be_bytes(*b"tern ren"),
    u64::from_be_bytes(*b"dezvous1"),
);

/// The score of `instance_id` for `key`: the candidate with the highest score owns the key.
pub fn score(key: &[u8], instance_id: &str) -> u64 {
    let mut h = SipHasher24::new_with_keys(SIP_KEY.0, SIP_KEY.1);
    // The length prefix keeps (key, id) pairs unambiguous: ("ab", "c") ≠ ("a", "bc").
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    h.write(&len.to_be_bytes());
    h.write(key);
    h.write(instance_id.as_bytes());
    h.finish()
}

/// The candidate that owns `key`, or `None` when there is no candidate.
pub fn owner<'a>(key: &[u8], candidates: &'a [Peer]) -> Option<&'a Peer> {
    candidates
        .iter()
        .max_by_key(|p| (score(key, &p.instance_id), p.instance_id.as_str()))
}

/// The Network Server instance that owns the device with this DevAddr (uplinks of activated
/// devices). Key: `"dev-addr:"` followed by the 4 DevAddr bytes, most significant first.
pub fn by_dev_addr(dev_addr: DevAddr, candidates: &[Peer]) -> Option<&Peer> {
    owner(&prefixed(b"dev-addr:", &dev_addr.0), candidates)
}

/// The Network Server instance that owns the device with this DevEUI (join-requests). Key:
/// `"dev-eui:"` followed by the 8 DevEUI bytes, most significant first.
pub fn by_dev_eui(dev_eui: Eui64, candidates: &[Peer]) -> Option<&Peer> {
    owner(&prefixed(b"dev-eui:", &dev_eui.0), candidates)
}

/// The Application Server instance that owns an application. Key: `"application:"` followed
/// by the UTF-8 application ID.
pub fn by_application<'a>(application_id: &str, candidates: &'a [Peer]) -> Option<&'a Peer> {
    owner(
        &prefixed(b"application:", application_id.as_bytes()),
        candidates,
    )
}

/// The live instance of `role` in `directory` that owns `key` (built as the helpers above
/// build theirs), or `None` when no instance of the role is known.
pub fn owner_in(directory: &dyn PeerDirectory, role: PeerRole, key: &[u8]) -> Option<Peer> {
    owner(key, &directory.peers(role)).cloned()
}

fn prefixed(prefix: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + bytes.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(bytes);
    key
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn peers(ids: &BTreeSet<String>) -> Vec<Peer> {
        ids.iter()
            .map(|id| Peer {
                instance_id: id.clone(),
                address: format!("http://{id}.invalid:1884"),
                roles: [PeerRole::NetworkServer].into(),
            })
            .collect()
    }

    fn keys(n: u32) -> impl Iterator<Item = DevAddr> {
        // Spread over the whole space, like real DevAddrs of several NetIDs.
        (0..n).map(|i| DevAddr::from_u32(i.wrapping_mul(2_654_435_761)))
    }

    #[test]
    fn scores_are_pinned() {
        // Known values, computed with an independent SipHash-2-4 implementation (checked
        // against the reference test vector of the SipHash paper). If this fails, the hash
        // changed and every device would move to another instance.
        assert_eq!(score(b"", ""), 0x2290_e1dd_84b8_1135);
        assert_eq!(
            score(b"dev-addr:\x26\x01\x02\x03", "ns-1"),
            0x220d_65ba_c1be_ec7e
        );
        assert_eq!(score(b"application:app-1", "as-2"), 0xff3c_88ff_3763_ed5d);
    }

    #[test]
    fn no_candidates_no_owner() {
        assert!(by_dev_addr(DevAddr::from_u32(1), &[]).is_none());
    }

    #[test]
    fn owner_does_not_depend_on_candidate_order() {
        let ids: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
        let mut ps = peers(&ids);
        let before: Vec<_> = keys(500)
            .map(|k| by_dev_addr(k, &ps).unwrap().instance_id.clone())
            .collect();
        ps.reverse();
        let after: Vec<_> = keys(500)
            .map(|k| by_dev_addr(k, &ps).unwrap().instance_id.clone())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn kinds_of_keys_are_separate() {
        let ids: BTreeSet<String> = (0..16).map(|i| format!("ns-{i}")).collect();
        let ps = peers(&ids);
        // Same bytes as DevAddr and as the start of a DevEUI must not always agree.
        let differ = (0..200u32)
            .filter(|&i| {
                let a = by_dev_addr(DevAddr::from_u32(i), &ps).unwrap();
                let e = by_dev_eui(Eui64::from_u64(u64::from(i) << 32), &ps).unwrap();
                a.instance_id != e.instance_id
            })
            .count();
        assert!(differ > 100, "only {differ} of 200 differ");
    }

    fn id_set(min: usize, max: usize) -> impl Strategy<Value = BTreeSet<String>> {
        prop::collection::btree_set("[a-z0-9-]{1,24}", min..=max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn joining_peer_takes_keys_only_for_itself(ids in id_set(1, 8), new in "[a-z0-9-]{1,24}") {
            prop_assume!(!ids.contains(&new));
            let before = peers(&ids);
            let mut with_new = ids.clone();
            with_new.insert(new.clone());
            let after = peers(&with_new);
            let mut moved = 0;
            for k in keys(2000) {
                let (b, a) = (by_dev_addr(k, &before).unwrap(), by_dev_addr(k, &after).unwrap());
                if a.instance_id != b.instance_id {
                    prop_assert_eq!(&a.instance_id, &new);
                    moved += 1;
                }
            }
            // The newcomer takes about 1/(n+1) of the keys: not none, not most.
            let expected = 2000 / with_new.len();
            prop_assert!(moved > expected / 2 && moved < expected * 2, "moved {moved}, expected ≈{expected}");
        }

        #[test]
        fn leaving_peer_moves_only_its_keys(ids in id_set(2, 8), leave in any::<prop::sample::Index>()) {
            let gone = leave.get(&ids.iter().collect::<Vec<_>>()).to_string();
            let before = peers(&ids);
            let mut rest = ids.clone();
            rest.remove(&gone);
            let after = peers(&rest);
            for k in keys(2000) {
                let (b, a) = (by_dev_addr(k, &before).unwrap(), by_dev_addr(k, &after).unwrap());
                if b.instance_id != gone {
                    prop_assert_eq!(&a.instance_id, &b.instance_id);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn keys_are_balanced(ids in id_set(2, 8)) {
            const KEYS: u32 = 20_000;
            let ps = peers(&ids);
            let mut counts: HashMap<&str, u32> = HashMap::new();
            for k in keys(KEYS) {
                *counts.entry(&by_dev_addr(k, &ps).unwrap().instance_id).or_default() += 1;
            }
            let mean = f64::from(KEYS) / ps.len() as f64;
            for p in &ps {
                let n = f64::from(counts.get(p.instance_id.as_str()).copied().unwrap_or(0));
                // ±10% is more than 5 standard deviations for these sizes.
                prop_assert!((n - mean).abs() <= mean * 0.10, "{}: {n} keys, mean {mean}", p.instance_id);
            }
        }

        #[test]
        fn applications_are_balanced(ids in id_set(2, 6)) {
            const APPS: u32 = 12_000;
            let ps = peers(&ids);
            let mut counts: HashMap<&str, u32> = HashMap::new();
            for i in 0..APPS {
                let app = format!("app-{i}");
                *counts.entry(&by_application(&app, &ps).unwrap().instance_id).or_default() += 1;
            }
            let mean = f64::from(APPS) / ps.len() as f64;
            for p in &ps {
                let n = f64::from(counts.get(p.instance_id.as_str()).copied().unwrap_or(0));
                prop_assert!((n - mean).abs() <= mean * 0.10, "{}: {n} apps, mean {mean}", p.instance_id);
            }
        }
    }
}
