//! Cached-token requests are recorded once a second per (VM, identity, resource): the first as
//! it happens (so `misim events --follow` shows it at once), the rest as a count carried by the
//! next one recorded. A busy app asks IMDS thousands of times a second; recording each would
//! cost the cached path a quarter of its throughput and drown the timeline.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct HitCoalescer {
    windows: Mutex<crate::FastMap<u64, (Instant, u64)>>,
    hasher: foldhash::fast::RandomState,
}

impl HitCoalescer {
    /// `Some(n)`: record this hit, mentioning `n` earlier hits that were not recorded; `None`:
    /// count it only.
    pub fn admit(
        &self,
        vm_id: &str,
        principal_id: &str,
        resource: &str,
        now: Instant,
    ) -> Option<u64> {
        let key = self.hasher.hash_one((vm_id, principal_id, resource));
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.entry(key) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((now, 0));
                Some(0)
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let (start, skipped) = *slot.get();
                if now.duration_since(start) >= WINDOW {
                    slot.insert((now, 0));
                    Some(skipped)
                } else {
                    slot.get_mut().1 += 1;
                    None
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hit_of_a_window_is_recorded_with_the_count_before_it() {
        let coalescer = HitCoalescer::default();
        let t0 = Instant::now();
        assert_eq!(coalescer.admit("vm", "p", "r", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                coalescer.admit("vm", "p", "r", t0 + Duration::from_millis(i * 100)),
                None
            );
        }
        assert_eq!(
            coalescer.admit("vm", "p", "other", t0 + Duration::from_millis(200)),
            Some(0)
        );
        assert_eq!(coalescer.admit("vm", "p", "r", t0 + WINDOW), Some(5));
        assert_eq!(
            coalescer.admit("vm", "p", "r", t0 + WINDOW + Duration::from_millis(1)),
            None
        );
    }
}
