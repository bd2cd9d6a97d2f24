//! Operations beside the server core: `server doctor` and the live metrics. They read the core's types; the
//! core never imports them (the master reports ticks through [`crate::master::TickObserver`]).

pub mod doctor;
pub mod live;
