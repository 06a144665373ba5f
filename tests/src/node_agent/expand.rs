//! `$(VAR)` expansion with the kubelet's rules (Kubernetes' `third_party/forked/golang/expansion`):
//! `$(NAME)` becomes NAME's value when NAME is defined and stays as written when it is not, `$$`
//! is an escaped `$`, and any other `$` is copied as is.

/// Expands every `$(NAME)` in `input` for which `lookup` knows a value.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(close) = body.find(')')
        {
            let name = &body[..close];
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[close + 1..];
        } else {
            // A lone `$`, or `$(` never closed: kept as written.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&'static str, &'static str)], input: &str) -> String {
        expand(input, |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    #[test]
    fn known_variables_are_replaced_where_they_appear() {
        assert_eq!(with(&[("POD_IP", "127.1.0.2")], "$(POD_IP):9090"), "127.1.0.2:9090");
        assert_eq!(with(&[("A", "x"), ("B", "y")], "$(A)-$(B)-$(A)"), "x-y-x");
    }

    #[test]
    fn unknown_variables_are_left_as_written() {
        assert_eq!(with(&[], "--listen $(POD_IP):9090"), "--listen $(POD_IP):9090");
    }

    #[test]
    fn a_double_dollar_escapes_a_reference() {
        assert_eq!(with(&[("A", "x")], "$$(A) $$ $(A)"), "$(A) $ x");
    }

    #[test]
    fn stray_and_unclosed_dollars_are_copied() {
        assert_eq!(with(&[("A", "x")], "cost $5, $(A"), "cost $5, $(A");
        assert_eq!(with(&[], "end$"), "end$");
        assert_eq!(with(&[("A", "x")], "$$$(A)"), "$x");
    }

    #[test]
    fn an_empty_reference_is_a_variable_with_an_empty_name() {
        assert_eq!(with(&[], "$()"), "$()");
    }
}
