//! Which names an expression reads from its input.

use cel::common::ast::{EntryExpr, Expr};
use cel::IdedExpr;

/// Namespaces of the functions registered in the shared environment: `math.abs(x)` parses as a
/// call on the identifier `math`, which is not an input field.
const FUNCTION_NAMESPACES: &[&str] = &["math", "lists", "optional", "strings"];

/// Type names an expression may write as values (`type(x) == int`). Not treated as fields, so
/// they keep resolving to the types. `type` itself is left out on purpose: it is a common field
/// name and is only ever called as a function, which is not an identifier.
pub(crate) const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "dyn",
];

/// The free identifiers of `expr` in order of first use: what it reads from its input.
/// Variables bound by comprehensions (`xs.map(x, x * 2)`) are not free where they are bound.
pub(crate) fn free_identifiers(expr: &IdedExpr) -> Vec<String> {
    let mut out = Vec::new();
    let mut bound = Vec::new();
    walk(expr, &mut bound, &mut out);
    out
}

fn walk(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            let internal = name.starts_with('@');
            if !internal
                && !TYPE_NAMES.contains(&name.as_str())
                && !bound.iter().any(|b| b == name)
                && !out.iter().any(|o| o == name)
            {
                out.push(name.clone());
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                let namespace = matches!(&target.expr,
                    Expr::Ident(n) if FUNCTION_NAMESPACES.contains(&n.as_str()));
                if !namespace {
                    walk(target, bound, out);
                }
            }
            for arg in &call.args {
                walk(arg, bound, out);
            }
        }
        Expr::Comprehension(comp) => {
            walk(&comp.iter_range, bound, out);
            walk(&comp.accu_init, bound, out);
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(v2) = &comp.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(comp.accu_var.clone());
            walk(&comp.loop_cond, bound, out);
            walk(&comp.loop_step, bound, out);
            walk(&comp.result, bound, out);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for e in &list.elements {
                walk(e, bound, out);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                walk_entry(&entry.expr, bound, out);
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                walk_entry(&entry.expr, bound, out);
            }
        }
        Expr::Select(select) => walk(&select.operand, bound, out),
    }
}

fn walk_entry(entry: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match entry {
        EntryExpr::StructField(field) => walk(&field.value, bound, out),
        EntryExpr::MapEntry(entry) => {
            walk(&entry.key, bound, out);
            walk(&entry.value, bound, out);
        }
    }
}
