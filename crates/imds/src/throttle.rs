//! Azure's documented IMDS limits for the identity category: 20 requests per second and 5
//! concurrent requests per VM (spec/tokens.md §1.5); excess gets 429 with `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const REQUESTS_PER_SECOND: f64 = 20.0;
pub const CONCURRENT_REQUESTS: usize = 5;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: Arc<Semaphore>,
}

#[derive(Default)]
pub struct Throttle {
    buckets: Mutex<crate::FastMap<String, Bucket>>,
}

/// Held while a request is served; dropping it frees its concurrency slot.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

impl Throttle {
    /// Admits one identity request of `vm_id`, or `None` when it is over a limit.
    pub fn admit(&self, vm_id: &str, now: Instant) -> Option<Admission> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // The VM's id is copied only the first time: this runs for every identity request.
        if !buckets.contains_key(vm_id) {
            buckets.insert(
                vm_id.to_string(),
                Bucket {
                    tokens: REQUESTS_PER_SECOND,
                    refilled: now,
                    in_flight: Arc::new(Semaphore::new(CONCURRENT_REQUESTS)),
                },
            );
        }
        let bucket = buckets.get_mut(vm_id)?;
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * REQUESTS_PER_SECOND).min(REQUESTS_PER_SECOND);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return None;
        }
        let permit = bucket.in_flight.clone().try_acquire_owned().ok()?;
        bucket.tokens -= 1.0;
        Some(Admission { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn twenty_per_second_per_vm() {
        let throttle = Throttle::default();
        let start = Instant::now();
        let admitted = (0..25).filter_map(|_| throttle.admit("vm", start)).count();
        assert_eq!(
            admitted, 20,
            "sequential requests: the rate limit bites at 20"
        );
        assert!(
            throttle.admit("other-vm", start).is_some(),
            "limits are per VM"
        );
        assert!(
            throttle
                .admit("vm", start + Duration::from_millis(100))
                .is_some(),
            "tokens refill at 20/s"
        );
        assert!(
            throttle
                .admit("vm", start + Duration::from_millis(100))
                .is_some()
        );
        assert!(
            throttle
                .admit("vm", start + Duration::from_millis(100))
                .is_none()
        );
    }

    #[test]
    fn five_at_once() {
        let throttle = Throttle::default();
        let now = Instant::now();
        let held: Vec<Admission> = (0..5).filter_map(|_| throttle.admit("vm", now)).collect();
        assert_eq!(held.len(), 5);
        assert!(
            throttle.admit("vm", now).is_none(),
            "a sixth concurrent request is refused"
        );
        drop(held);
        assert!(throttle.admit("vm", now).is_some());
    }
}
