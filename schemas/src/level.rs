//! NMIS event levels and event states.

use std::fmt;

/// An NMIS level, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Rank 0.
    Normal,
    /// Rank 1.
    Warning,
    /// Rank 2.
    Minor,
    /// Rank 3.
    Major,
    /// Rank 4.
    Critical,
    /// Rank 5.
    Fatal,
}

impl Level {
    /// Every level, in rank order.
    pub const ALL: [Level; 6] = [
        Level::Normal,
        Level::Warning,
        Level::Minor,
        Level::Major,
        Level::Critical,
        Level::Fatal,
    ];

    /// Parses a level name, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }

    /// The canonical name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "Normal",
            Level::Warning => "Warning",
            Level::Minor => "Minor",
            Level::Major => "Major",
            Level::Critical => "Critical",
            Level::Fatal => "Fatal",
        }
    }

    /// 0 (Normal) to 5 (Fatal).
    pub fn rank(self) -> i32 {
        self as i32
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a stateful event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The condition started (Node Down, Interface Down, Proactive …).
    Down,
    /// The condition cleared (Node Up, … Closed).
    Up,
}

impl State {
    /// Parses `down` or `up`, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<State> {
        if s.eq_ignore_ascii_case("down") {
            Some(State::Down)
        } else if s.eq_ignore_ascii_case("up") {
            Some(State::Up)
        } else {
            None
        }
    }

    /// `down` or `up`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Down => "down",
            State::Up => "up",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_case_insensitively_and_rank_in_order() {
        for (i, l) in Level::ALL.into_iter().enumerate() {
            assert_eq!(l.rank(), i as i32);
            assert_eq!(Level::parse(&l.as_str().to_uppercase()), Some(l));
            assert_eq!(Level::parse(&l.as_str().to_lowercase()), Some(l));
        }
        assert_eq!(Level::parse("Critical2"), None);
        assert!(Level::Normal < Level::Fatal);
    }

    #[test]
    fn states_parse() {
        assert_eq!(State::parse("DOWN"), Some(State::Down));
        assert_eq!(State::parse("up"), Some(State::Up));
        assert_eq!(State::parse("sideways"), None);
    }
}
