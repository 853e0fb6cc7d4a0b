//! Automatic scaling from traffic. [`policy`] is the pure decision core (signals in, a desired
//! size and one action out); the actuator that reads signals through the admin path and adds or
//! removes nodes through a provisioner is not built yet.

pub mod policy;
