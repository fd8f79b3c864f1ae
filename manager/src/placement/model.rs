//! The placement as data: its members, their states, the changes the admin
//! API and the hand-off make to it, and a placement with its version. No IO
//! and no dependency on the cluster, which routes by it.

use serde::{Deserialize, Serialize};

/// A member's part in the placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns its share: read and written.
    Up,
    /// Receiving its share: written, not read, until the hand-off is done.
    Syncing,
    /// Handing its share off: read and written until the hand-off is done,
    /// then removed.
    Leaving,
}

/// One data node in the placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub address: String,
    pub state: MemberState,
}

impl Member {
    /// In the ring reads use (the placement before the change).
    pub fn reads(&self) -> bool {
        matches!(self.state, MemberState::Up | MemberState::Leaving)
    }
    /// In the ring after the change.
    pub fn owns_after(&self) -> bool {
        matches!(self.state, MemberState::Up | MemberState::Syncing)
    }
}

/// The node set; its version is the etcd revision it was stored at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub members: Vec<Member>,
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("no node with id {0:?} in the placement")]
    UnknownId(String),
    #[error("id {id:?} is already used by the node at {address}")]
    IdTaken { id: String, address: String },
    #[error("removing {0:?} would leave no node to own the keys")]
    LastNode(String),
}

impl Placement {
    /// A placement of `members`, all up.
    pub fn of(members: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut members: Vec<Member> = members
            .into_iter()
            .map(|(id, address)| Member {
                id,
                address,
                state: MemberState::Up,
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Self { members }
    }

    /// A hand-off is under way.
    pub fn moving(&self) -> bool {
        self.members.iter().any(|m| m.state != MemberState::Up)
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Adds node `id` at `address` as syncing. Adding a leaving node takes
    /// it back (the removal is rolled back). Returns whether anything
    /// changed.
    pub fn add(&mut self, id: &str, address: &str) -> Result<bool, ChangeError> {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            if m.address != address && m.state != MemberState::Leaving {
                return Err(ChangeError::IdTaken {
                    id: id.to_string(),
                    address: m.address.clone(),
                });
            }
            m.address = address.to_string();
            return Ok(match m.state {
                MemberState::Leaving => {
                    m.state = MemberState::Up;
                    true
                }
                _ => false,
            });
        }
        self.members.push(Member {
            id: id.to_string(),
            address: address.to_string(),
            state: MemberState::Syncing,
        });
        self.members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(true)
    }

    /// Starts removing node `id`: an up node leaves after handing its share
    /// off; a syncing one (its addition not finished) is dropped at once,
    /// which rolls the addition back (it was never read). Refused when no
    /// node would own the keys afterwards. Returns whether anything
    /// changed.
    /// Member `id` is now reached at `address` (a container or pod that came
    /// back with a new IP keeps its id): true if that changed anything. Its
    /// state is kept; the managers reconnect, and the new process, which
    /// holds nothing, is warmed up like any restarted node.
    pub fn readdress(&mut self, id: &str, address: &str) -> Result<bool, ChangeError> {
        let Some(m) = self.members.iter_mut().find(|m| m.id == id) else {
            return Err(ChangeError::UnknownId(id.to_string()));
        };
        let changed = m.address != address;
        m.address = address.to_string();
        Ok(changed)
    }

    pub fn remove(&mut self, id: &str) -> Result<bool, ChangeError> {
        let Some(pos) = self.members.iter().position(|m| m.id == id) else {
            return Err(ChangeError::UnknownId(id.to_string()));
        };
        let state = self.members[pos].state;
        if state == MemberState::Leaving {
            return Ok(false);
        }
        let owners = self
            .members
            .iter()
            .filter(|m| m.owns_after() && m.id != id)
            .count();
        if owners == 0 {
            return Err(ChangeError::LastNode(id.to_string()));
        }
        if state == MemberState::Syncing {
            self.members.remove(pos);
        } else {
            self.members[pos].state = MemberState::Leaving;
        }
        Ok(true)
    }

    /// The placement once the hand-off is done: syncing members up,
    /// leaving ones gone.
    pub fn finished(&self) -> Self {
        Self {
            members: self
                .members
                .iter()
                .filter(|m| m.owns_after())
                .map(|m| Member {
                    state: MemberState::Up,
                    ..m.clone()
                })
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A placement read from the store, with its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub version: u64,
    pub placement: Placement,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Placement {
        Placement::of([
            ("a".to_string(), "http://a".to_string()),
            ("b".to_string(), "http://b".to_string()),
            ("c".to_string(), "http://c".to_string()),
        ])
    }

    #[test]
    fn a_member_back_at_a_new_address_keeps_its_id_and_state() {
        let mut p = three();
        assert_eq!(p.readdress("b", "http://b2"), Ok(true));
        let b = p.member("b").unwrap();
        assert_eq!(
            (b.address.as_str(), b.state),
            ("http://b2", MemberState::Up)
        );
        assert!(!p.moving(), "no hand-off: the ring is built from ids");
        assert_eq!(p.readdress("b", "http://b2"), Ok(false));
        assert!(p.readdress("z", "http://z").is_err());
    }

    #[test]
    fn adding_makes_a_syncing_member_that_finishing_brings_up() {
        let mut p = three();
        assert!(!p.moving());
        assert_eq!(p.add("d", "http://d"), Ok(true));
        assert!(p.moving());
        assert_eq!(p.member("d").map(|m| m.state), Some(MemberState::Syncing));
        // Idempotent.
        assert_eq!(p.add("d", "http://d"), Ok(false));
        assert!(matches!(
            p.add("a", "http://x"),
            Err(ChangeError::IdTaken { .. })
        ));
        let done = p.finished();
        assert!(!done.moving());
        assert_eq!(done.members.len(), 4);
    }

    #[test]
    fn removing_leaves_then_drops_and_rolls_back_an_unfinished_addition() {
        let mut p = three();
        assert_eq!(p.remove("b"), Ok(true));
        assert_eq!(p.member("b").map(|m| m.state), Some(MemberState::Leaving));
        assert!(p.member("b").is_some_and(Member::reads));
        assert!(!p.member("b").is_some_and(Member::owns_after));
        assert_eq!(p.finished().members.len(), 2);
        // Taking a leaving node back.
        assert_eq!(p.add("b", "http://b"), Ok(true));
        assert!(!p.moving());
        // Removing a node being added drops it at once.
        p.add("d", "http://d").unwrap();
        assert_eq!(p.remove("d"), Ok(true));
        assert_eq!(p, three());
        assert!(matches!(p.remove("zz"), Err(ChangeError::UnknownId(_))));
    }

    #[test]
    fn the_last_owner_cannot_leave() {
        let mut p = Placement::of([("a".to_string(), "http://a".to_string())]);
        assert!(matches!(p.remove("a"), Err(ChangeError::LastNode(_))));
        // Nor the node replacing a leaving one: no owner would remain.
        p.add("d", "http://d").unwrap();
        assert_eq!(p.remove("a"), Ok(true));
        assert!(matches!(p.remove("d"), Err(ChangeError::LastNode(_))));
        assert_eq!(p.finished().members.len(), 1);
    }

    #[test]
    fn placements_round_trip_as_json() {
        let mut p = three();
        p.add("d", "http://d").unwrap();
        assert_eq!(Placement::decode(&p.encode()).unwrap(), p);
    }
}
