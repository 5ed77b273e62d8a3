//! Simulated time = wall time + an offset that only grows (CONTRACT.md, Time).
//!
//! Lifetimes (tokens, certificates, signing keys, caches) follow [`Clock::now`]; the freshness
//! window of client assertions follows [`Clock::wall_now`], because real clients mint them in
//! wall time.

use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: AtomicI64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClockError {
    #[error("the simulated clock only moves forward")]
    Backwards,
    #[error("the offset {0}s is out of range")]
    OutOfRange(i64),
}

/// Largest offset accepted: 100 years keeps every timestamp far inside `i64`/`time` ranges.
pub const MAX_OFFSET_SECS: i64 = 100 * 366 * 24 * 3600;

impl Clock {
    pub fn with_offset(offset_secs: i64) -> Self {
        Self {
            offset_secs: AtomicI64::new(offset_secs.clamp(0, MAX_OFFSET_SECS)),
        }
    }

    /// Wall-clock time. The only place misim reads the system clock.
    pub fn wall_now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    pub fn offset_secs(&self) -> i64 {
        self.offset_secs.load(Ordering::Acquire)
    }

    /// Simulated time.
    pub fn now(&self) -> OffsetDateTime {
        Self::wall_now() + time::Duration::seconds(self.offset_secs())
    }

    pub fn now_unix(&self) -> i64 {
        self.now().unix_timestamp()
    }

    /// Restores a persisted offset at start (a larger one already set wins); unparsable or
    /// out-of-range text is ignored.
    pub fn restore(&self, persisted: Option<&str>) {
        if let Some(offset) = persisted.and_then(|v| v.trim().parse::<i64>().ok())
            && offset > self.offset_secs()
        {
            let _ = self.set_offset(offset);
        }
    }

    /// Simulated now, RFC 3339.
    pub fn now_rfc3339(&self) -> String {
        self.now()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// The clock as the internal APIs report it.
    pub fn state(&self) -> crate::internal::ClockState {
        crate::internal::ClockState {
            offset_secs: self.offset_secs(),
            now: self.now_rfc3339(),
        }
    }

    /// Moves simulated time forward to `offset_secs`; never backwards.
    pub fn set_offset(&self, offset_secs: i64) -> Result<(), ClockError> {
        if !(0..=MAX_OFFSET_SECS).contains(&offset_secs) {
            return Err(ClockError::OutOfRange(offset_secs));
        }
        let mut current = self.offset_secs();
        loop {
            if offset_secs < current {
                return Err(ClockError::Backwards);
            }
            match self.offset_secs.compare_exchange(
                current,
                offset_secs,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_only_grows() {
        let clock = Clock::with_offset(10);
        assert_eq!(clock.set_offset(5), Err(ClockError::Backwards));
        assert_eq!(clock.set_offset(20), Ok(()));
        assert_eq!(clock.offset_secs(), 20);
        assert_eq!(clock.set_offset(-1), Err(ClockError::OutOfRange(-1)));
        assert!(clock.now() > Clock::wall_now() + time::Duration::seconds(19));
        clock.restore(Some("15"));
        assert_eq!(
            clock.offset_secs(),
            20,
            "a smaller persisted offset never moves it back"
        );
        clock.restore(Some("30"));
        clock.restore(Some("garbage"));
        assert_eq!(clock.state().offset_secs, 30);
    }
}
