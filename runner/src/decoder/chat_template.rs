//! The model's own chat template (Jinja, from `tokenizer_config.json` or GGUF metadata),
//! rendered the way Hugging Face's `apply_chat_template` does: `trim_blocks` and
//! `lstrip_blocks` on, Python string methods available, and the helpers templates call
//! (`raise_exception`, `strftime_now`, `tojson`).

use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::types::ChatMessage;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())?;
        Ok(ChatTemplate { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| {
                // The template's own raise_exception text is the useful part.
                let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
                format!("the model's chat template refused the messages: {detail}")
            })
    }
}

/// `strftime_now(format)`: today's date in the C `strftime` directives templates use.
fn strftime_now(format: String) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&now.year().to_string()),
            Some('m') => out.push_str(&format!("{:02}", u8::from(now.month()))),
            Some('d') => out.push_str(&format!("{:02}", now.day())),
            Some('B') => out.push_str(&now.month().to_string()),
            Some('b') => out.push_str(&now.month().to_string()[..3]),
            Some('H') => out.push_str(&format!("{:02}", now.hour())),
            Some('M') => out.push_str(&format!("{:02}", now.minute())),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are helpful<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn chatml_adds_the_default_system_prompt_and_opens_the_reply() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("compiles");
        let out = t.render(&[msg("user", "Hi")]).expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&[
                msg("system", "Be brief"),
                msg("user", "Hi"),
                msg("assistant", "Hello"),
                msg("user", "Bye"),
            ])
            .expect("renders");
        assert!(out.starts_with("<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi"), "{out}");
        assert!(
            out.contains("<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"),
            "{out}"
        );
    }

    #[test]
    fn template_helpers_work() {
        let source = "{% if messages[0].role == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip() | tojson }}{{ strftime_now('%Y') | length }}";
        let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
        assert_eq!(t.render(&[msg("user", "  hi ")]).expect("renders"), "<s>\"hi\"4");
        let err = t.render(&[msg("bad", "x")]).expect_err("raises");
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn blocks_are_trimmed_like_hugging_face() {
        let source = "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(source, "", "").expect("compiles");
        assert_eq!(t.render(&[msg("user", "a"), msg("user", "b")]).expect("renders"), "  a\n  b\n");
    }
}
