//! Procedural macros for [herd](https://docs.rs/herd). Use them through the
//! `herd` crate (`#[herd::task]`), not directly.
//!
//! The attribute is deliberately tiny and has no dependency on `syn`: it finds
//! the function's name, refuses generic functions, and appends one
//! `herd::register_task!(name);` invocation after the function, which does the
//! real work with `macro_rules!` inside `herd`.

use proc_macro::{Delimiter, Group, Ident, Punct, Spacing, Span, TokenStream, TokenTree};

/// Registers a plain function as a herd task, so that a child process can
/// find it by its stable name (`module_path!()::name`) and type fingerprint.
///
/// The function must not be generic; its arguments and return type must be
/// serde-serializable. The function stays an ordinary function: it can still
/// be called directly.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[herd::task] takes no arguments", Span::call_site());
    }
    let tokens: Vec<TokenTree> = item.clone().into_iter().collect();
    let mut name = None;
    for (i, tt) in tokens.iter().enumerate() {
        if let TokenTree::Ident(id) = tt
            && id.to_string() == "fn"
        {
            match tokens.get(i + 1) {
                Some(TokenTree::Ident(n)) => {
                    if let Some(TokenTree::Punct(p)) = tokens.get(i + 2)
                        && p.as_char() == '<'
                    {
                        return compile_error(
                            "#[herd::task] cannot register a generic function: \
                             a child process must find exactly one function by name",
                            n.span(),
                        );
                    }
                    name = Some(n.clone());
                }
                _ => return compile_error("expected a function name after `fn`", id.span()),
            }
            break;
        }
        if let TokenTree::Ident(id) = tt
            && id.to_string() == "async"
        {
            return compile_error(
                "#[herd::task] cannot register an async fn: a task runs synchronously \
                 in its child process (run a runtime inside the task if it needs one)",
                id.span(),
            );
        }
    }
    let Some(name) = name else {
        return compile_error("#[herd::task] applies to a function", Span::call_site());
    };
    let mut out = item;
    out.extend(register_call(name));
    out
}

/// `::herd::register_task!(name);`
fn register_call(name: Ident) -> TokenStream {
    let span = name.span();
    let path: Vec<TokenTree> = vec![
        TokenTree::Punct(Punct::new(':', Spacing::Joint)),
        TokenTree::Punct(Punct::new(':', Spacing::Alone)),
        TokenTree::Ident(Ident::new("herd", span)),
        TokenTree::Punct(Punct::new(':', Spacing::Joint)),
        TokenTree::Punct(Punct::new(':', Spacing::Alone)),
        TokenTree::Ident(Ident::new("register_task", span)),
        TokenTree::Punct(Punct::new('!', Spacing::Alone)),
        TokenTree::Group(Group::new(
            Delimiter::Parenthesis,
            TokenStream::from(TokenTree::Ident(name)),
        )),
        TokenTree::Punct(Punct::new(';', Spacing::Alone)),
    ];
    path.into_iter().collect()
}

fn compile_error(msg: &str, span: Span) -> TokenStream {
    let mut lit = proc_macro::Literal::string(msg);
    lit.set_span(span);
    let mut group = Group::new(
        Delimiter::Parenthesis,
        TokenStream::from(TokenTree::Literal(lit)),
    );
    group.set_span(span);
    let mut bang = Punct::new('!', Spacing::Alone);
    bang.set_span(span);
    let mut semi = Punct::new(';', Spacing::Alone);
    semi.set_span(span);
    [
        TokenTree::Ident(Ident::new("compile_error", span)),
        TokenTree::Punct(bang),
        TokenTree::Group(group),
        TokenTree::Punct(semi),
    ]
    .into_iter()
    .collect()
}
