//! `AUTH` for the RESP gateway: one password for the `default` user, as Redis's
//! `requirepass` has it. Until a connection authenticates it may only authenticate, say hello
//! with credentials, or quit.

use std::sync::Arc;

/// Answer to a command sent before authenticating, the text Redis clients recognise.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// Answer to wrong credentials, the text Redis clients recognise.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The one user Redis clients name when they send only a password.
const DEFAULT_USER: &[u8] = b"default";

/// A listener's password, if it has one.
#[derive(Debug, Clone, Default)]
pub struct Password(Option<Arc<[u8]>>);

impl Password {
    /// `None` or an empty string: no password, every connection starts authenticated.
    pub fn new(password: Option<&str>) -> Password {
        Password(
            password
                .filter(|p| !p.is_empty())
                .map(|p| p.as_bytes().into()),
        )
    }

    /// True when connections must authenticate.
    pub fn required(&self) -> bool {
        self.0.is_some()
    }

    /// Checks `AUTH [user] password`; `Err` holds the error reply's text.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> Result<(), &'static str> {
        let Some(expected) = &self.0 else {
            return match user {
                // Redis accepts any password for the default user while it has none.
                Some(u) if u == DEFAULT_USER => Ok(()),
                Some(_) => Err(WRONGPASS),
                None => Err(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ),
            };
        };
        let user_ok = user.is_none_or(|u| u == DEFAULT_USER);
        // Both comparisons always run, and the password's in time independent of where it
        // differs, so a wrong guess learns nothing from how long the answer took.
        if constant_time_eq(expected, password) & user_ok {
            Ok(())
        } else {
            Err(WRONGPASS)
        }
    }

    /// True when `command` (upper case) may run before authenticating.
    pub fn allowed_before_auth(command: &str) -> bool {
        matches!(command, "AUTH" | "HELLO" | "QUIT" | "RESET")
    }
}

/// Compares in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_password_alone_or_with_the_default_user_authenticates() {
        let p = Password::new(Some("s3cret"));
        assert!(p.required());
        assert_eq!(p.check(None, b"s3cret"), Ok(()));
        assert_eq!(p.check(Some(b"default"), b"s3cret"), Ok(()));
        assert_eq!(p.check(None, b"s3cre"), Err(WRONGPASS));
        assert_eq!(p.check(None, b"s3cret!"), Err(WRONGPASS));
        assert_eq!(p.check(Some(b"admin"), b"s3cret"), Err(WRONGPASS));
        assert_eq!(p.check(None, b""), Err(WRONGPASS));
    }

    #[test]
    fn without_a_password_plain_auth_is_an_error_as_in_redis() {
        for p in [Password::new(None), Password::new(Some(""))] {
            assert!(!p.required());
            assert!(
                p.check(None, b"x")
                    .unwrap_err()
                    .contains("without any password")
            );
            assert_eq!(p.check(Some(b"default"), b"x"), Ok(()));
            assert_eq!(p.check(Some(b"other"), b"x"), Err(WRONGPASS));
        }
    }

    #[test]
    fn only_authentication_and_quitting_run_before_auth() {
        for c in ["AUTH", "HELLO", "QUIT", "RESET"] {
            assert!(Password::allowed_before_auth(c));
        }
        for c in ["GET", "SET", "PING", "CONFIG", "INFO", "RINGKV.GET"] {
            assert!(!Password::allowed_before_auth(c));
        }
    }

    proptest! {
        #[test]
        fn constant_time_eq_is_equality(a in proptest::collection::vec(any::<u8>(), 0..40),
                                        b in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
            prop_assert!(constant_time_eq(&a, &a.clone()));
        }
    }
}
