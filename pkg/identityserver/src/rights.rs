//! Set operations on rights, over the one mapping between the API's `Right` enum and the
//! rights strings ([`tern_api::rights`], re-exported here).

use std::collections::BTreeSet;

use tern_cluster::auth::grants;

pub use tern_api::rights::{RIGHTS, from_str, to_str};

/// The strings of API rights; `field` names the request field in the error for an invalid one.
pub fn strings(field: &str, rights: &[i32]) -> Result<BTreeSet<String>, String> {
    rights
        .iter()
        .map(|&r| {
            to_str(r)
                .map(str::to_owned)
                .ok_or_else(|| format!("{field}: {r} is not a right"))
        })
        .collect()
}

/// The API form of rights strings, in enum order; strings that name no right are left out.
pub fn enums(rights: &BTreeSet<String>) -> Vec<i32> {
    let mut out: Vec<i32> = rights
        .iter()
        .filter_map(|s| from_str(s))
        .map(|r| r as i32)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// What both sets grant: each right of one side that the other side grants (`all` ∩
/// `application:info` is `application:info`; `application:all` ∩ `all` is `application:all`).
pub fn intersect(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in a {
        if grants(b, r) {
            out.insert(r.clone());
        }
    }
    for r in b {
        if grants(a, r) {
            out.insert(r.clone());
        }
    }
    out
}

/// The first right of `wanted` that `held` does not grant.
pub fn first_missing<'a>(held: &BTreeSet<String>, wanted: &'a BTreeSet<String>) -> Option<&'a str> {
    wanted.iter().find(|r| !grants(held, r)).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(r: &[&str]) -> BTreeSet<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_enum_value_has_one_string_and_back() {
        let mut seen = BTreeSet::new();
        for (right, s) in RIGHTS {
            assert!(seen.insert(*s), "{s} twice");
            assert_eq!(from_str(s), Some(*right));
            assert_eq!(to_str(*right as i32), Some(*s));
        }
        // Every enum value but RIGHT_INVALID is mapped.
        for n in 1..=99 {
            if tern_api::v3::Right::try_from(n).is_ok() {
                assert!(to_str(n).is_some(), "right {n} unmapped");
            }
        }
        assert_eq!(to_str(0), None);
        assert!(strings("rights", &[0]).unwrap_err().contains("rights"));
    }

    #[test]
    fn intersection_respects_implied_rights() {
        assert_eq!(
            intersect(&set(&["all"]), &set(&["application:info"])),
            set(&["application:info"])
        );
        assert_eq!(
            intersect(&set(&["application:all"]), &set(&["all"])),
            set(&["application:all"])
        );
        assert!(intersect(&set(&["gateway:all"]), &set(&["application:info"])).is_empty());
        assert_eq!(
            first_missing(&set(&["application:info"]), &set(&["application:link"])),
            Some("application:link")
        );
    }
}
