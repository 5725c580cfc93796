//! The choice of which roles a process starts.

use clap::ValueEnum;

pub use tern_cluster::role::Role;

/// A role as written on the command line: one role, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Identity Server.
    Is,
    /// Gateway Server.
    Gs,
    /// Network Server.
    Ns,
    /// Join Server.
    Js,
    /// Application Server.
    As,
    /// All five roles.
    All,
}

/// The roles to start: no argument or `all` means all five; duplicates count once.
pub fn select(args: &[RoleArg]) -> Vec<Role> {
    if args.is_empty() || args.contains(&RoleArg::All) {
        return Role::ALL.to_vec();
    }
    let mut roles: Vec<Role> = args
        .iter()
        .map(|arg| match arg {
            RoleArg::Is => Role::Is,
            RoleArg::Gs => Role::Gs,
            RoleArg::Ns => Role::Ns,
            RoleArg::Js => Role::Js,
            RoleArg::As => Role::As,
            RoleArg::All => unreachable!("handled above"),
        })
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_or_all_selects_every_role() {
        assert_eq!(select(&[]), Role::ALL.to_vec());
        assert_eq!(select(&[RoleArg::Gs, RoleArg::All]), Role::ALL.to_vec());
    }

    #[test]
    fn duplicates_count_once_in_start_order() {
        assert_eq!(
            select(&[RoleArg::Ns, RoleArg::Gs, RoleArg::Ns]),
            vec![Role::Gs, Role::Ns]
        );
    }

    #[test]
    fn names() {
        assert_eq!(Role::As.to_string(), "as");
        assert_eq!(Role::Js.health_service_name(), "tern.js");
        for role in Role::ALL {
            let arg = RoleArg::from_str(role.as_str(), false).unwrap();
            assert_eq!(select(&[arg]), vec![role]);
        }
    }
}
