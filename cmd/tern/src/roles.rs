//! The five roles and the choice of which ones a process starts.

use std::fmt;

use clap::ValueEnum;

/// One of the five roles of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Identity Server: registry, API keys and rights.
    Is,
    /// Gateway Server: gateway connections and radio timing.
    Gs,
    /// Network Server: MAC state, dedup, ADR, downlink scheduling.
    Ns,
    /// Join Server: root keys and session key derivation.
    Js,
    /// Application Server: payload crypto, integrations.
    As,
}

impl Role {
    /// All roles, in start order.
    pub const ALL: [Role; 5] = [Role::Is, Role::Gs, Role::Ns, Role::Js, Role::As];

    /// The short name used on the command line (`ns`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Is => "is",
            Role::Gs => "gs",
            Role::Ns => "ns",
            Role::Js => "js",
            Role::As => "as",
        }
    }

    /// The name under which the gRPC health service reports this role (`tern.ns`).
    pub fn health_service_name(self) -> String {
        format!("tern.{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
