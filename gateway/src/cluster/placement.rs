//! Which node takes a new session: among live nodes of the isolation class
//! asked for, those with room for its sessions count, memory and disk; of
//! them the least loaded (the smallest share of its session capacity in
//! use, then the name, so the choice is stable). The choice is then
//! written by [`routing::place`](super::routing::place).

use std::collections::BTreeMap;

use super::nodes::NodeRecord;
use super::routing::Route;
use super::store::ClusterError;

/// What a new session asks of its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    /// MiB of memory limit (0: not asked).
    pub memory_mib: u64,
    /// MiB of disk (0: not asked).
    pub disk_mib: u64,
    /// `vm` or `namespace`: only nodes of this class (None: any).
    pub isolation: Option<String>,
}

/// What is placed on a node now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Load {
    sessions: u64,
    memory_mib: u64,
    disk_mib: u64,
}

/// The node for `request`, given the live `nodes` and every `route`.
pub fn choose<'a>(
    nodes: &'a [NodeRecord],
    routes: impl IntoIterator<Item = &'a Route>,
    request: &PlacementRequest,
) -> Result<&'a NodeRecord, ClusterError> {
    let mut load: BTreeMap<&str, Load> = BTreeMap::new();
    for route in routes {
        let l = load.entry(route.node.as_str()).or_default();
        l.sessions += 1;
        l.memory_mib += route.memory_mib;
        l.disk_mib += route.disk_mib;
    }
    let fits = |node: &NodeRecord| {
        let l = load.get(node.name.as_str()).copied().unwrap_or_default();
        let cap = node.capacity;
        l.sessions < cap.sessions
            && (cap.memory_mib == 0 || l.memory_mib + request.memory_mib <= cap.memory_mib)
            && (cap.disk_mib == 0 || l.disk_mib + request.disk_mib <= cap.disk_mib)
    };
    let of_class: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| {
            request
                .isolation
                .as_deref()
                .is_none_or(|class| n.isolation == class)
        })
        .collect();
    if of_class.is_empty() {
        return Err(ClusterError::NoCapacity(match &request.isolation {
            Some(class) => format!("no live node offers isolation {class:?}"),
            None => "no live node in the cluster".into(),
        }));
    }
    // A node shutting down takes no new session.
    let open: Vec<&NodeRecord> = of_class.into_iter().filter(|n| !n.draining).collect();
    if open.is_empty() {
        return Err(ClusterError::NoCapacity(
            "every live node that could hold the session is shutting down".into(),
        ));
    }
    open.into_iter()
        .filter(|n| fits(n))
        .min_by(|a, b| {
            let share = |n: &NodeRecord| {
                let used = load.get(n.name.as_str()).map_or(0, |l| l.sessions);
                // used/capacity compared without floats: a/b < c/d ⇔ ad < cb.
                (used, n.capacity.sessions.max(1))
            };
            let ((ua, ca), (ub, cb)) = (share(a), share(b));
            (u128::from(ua) * u128::from(cb))
                .cmp(&(u128::from(ub) * u128::from(ca)))
                .then_with(|| a.name.cmp(&b.name))
        })
        .ok_or_else(|| {
            ClusterError::NoCapacity(format!(
                "no live node has room for a session of {} MiB memory and {} MiB disk",
                request.memory_mib, request.disk_mib
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Capacity;

    fn node(name: &str, isolation: &str, sessions: u64, memory_mib: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            rest: String::new(),
            ssh: String::new(),
            host_key: String::new(),
            runtime: "local".into(),
            isolation: isolation.into(),
            capacity: Capacity {
                sessions,
                memory_mib,
                disk_mib: 0,
            },
            draining: false,
        }
    }

    fn route(node: &str, memory_mib: u64) -> Route {
        Route {
            node: node.into(),
            memory_mib,
            disk_mib: 0,
            moving_to: None,
            leftover_on: None,
            warm: false,
        }
    }

    #[test]
    fn least_loaded_share_wins_and_full_nodes_are_skipped() {
        let nodes = [node("a", "namespace", 2, 0), node("b", "namespace", 4, 0)];
        let req = PlacementRequest::default();
        // a 1/2 used, b 1/4 used: b.
        let routes = [route("a", 0), route("b", 0)];
        assert_eq!(choose(&nodes, &routes, &req).unwrap().name, "b");
        // a full: b even when b is fuller in count.
        let routes = [route("a", 0), route("a", 0), route("b", 0), route("b", 0)];
        assert_eq!(choose(&nodes, &routes, &req).unwrap().name, "b");
        let routes = [
            route("a", 0),
            route("a", 0),
            route("b", 0),
            route("b", 0),
            route("b", 0),
            route("b", 0),
        ];
        let err = choose(&nodes, &routes, &req).unwrap_err();
        assert!(err.to_string().contains("no live node has room"), "{err}");
    }

    #[test]
    fn memory_capacity_and_isolation_class_are_honoured() {
        let nodes = [node("a", "namespace", 10, 1024), node("v", "vm", 10, 0)];
        let big = PlacementRequest {
            memory_mib: 800,
            ..Default::default()
        };
        // a has 512 of 1024 used: 800 does not fit; v (no memory limit) does.
        let routes = [route("a", 512)];
        assert_eq!(choose(&nodes, &routes, &big).unwrap().name, "v");
        let ns_only = PlacementRequest {
            memory_mib: 800,
            isolation: Some("namespace".into()),
            ..Default::default()
        };
        assert!(choose(&nodes, &routes, &ns_only).is_err());
        let vm_only = PlacementRequest {
            isolation: Some("vm".into()),
            ..Default::default()
        };
        assert_eq!(choose(&nodes, &[], &vm_only).unwrap().name, "v");
        let none = PlacementRequest {
            isolation: Some("vm".into()),
            ..Default::default()
        };
        let err = choose(&nodes[..1], &[], &none).unwrap_err();
        assert!(err.to_string().contains("isolation \"vm\""), "{err}");
    }

    #[test]
    fn a_draining_node_takes_no_new_session() {
        let mut nodes = [node("a", "namespace", 10, 0), node("b", "namespace", 10, 0)];
        let req = PlacementRequest::default();
        // a is the least loaded, but shutting down: b.
        nodes[0].draining = true;
        let routes = [route("b", 0), route("b", 0)];
        assert_eq!(choose(&nodes, &routes, &req).unwrap().name, "b");
        nodes[1].draining = true;
        let err = choose(&nodes, &routes, &req).unwrap_err();
        assert!(err.to_string().contains("shutting down"), "{err}");
    }
}
