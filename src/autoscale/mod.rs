//! Automatic scaling from traffic. [`policy`] is the pure decision core (signals in, a desired
//! size and one action out); [`service`] runs it on the claimant and [`actuator`] acts through
//! the admin path, with a [`provision`]er starting and stopping the nodes. `[autoscale]` in
//! `cluster.toml` is read by [`config`].

pub mod actuator;
pub mod config;
pub mod policy;
pub mod provision;
pub mod service;
