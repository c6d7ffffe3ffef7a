//! Packing: a document's choices as a prefix tree of tokens ([`DocTree`]),
//! and several documents' trees merged into one forward ([`Span::packed`]),
//! each seeing only its own prefixes.

use candle_core::{Device, Result, Tensor};

use crate::backend::candle::span::{Span, ROOT};

/// The choices of one document as a prefix tree of tokens: every distinct
/// prefix of the sequences `context ++ continuation` (without their last
/// token, whose output nobody needs) is one node, forwarded once. The
/// context is shared by all choices, and so are the first tokens two
/// continuations have in common; the node of the context's last token
/// predicts every choice's first token. Nodes are in insertion order, so a
/// parent comes before its children.
#[derive(Debug, Clone)]
pub struct DocTree {
    tokens: Vec<u32>,
    /// Parent node, or [`ROOT`] for the first token.
    parent: Vec<u32>,
    depth: Vec<usize>,
    /// Every continuation's tokens, choices in order: the scored targets.
    targets: Vec<u32>,
    /// For each target, the node whose output predicts it.
    predictors: Vec<u32>,
}

impl DocTree {
    /// The tree of `(context, continuation)` token pairs, one per choice;
    /// `None` when a choice has an empty context (nothing predicts its first
    /// token).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a [u32], &'a [u32])>) -> Option<Self> {
        let mut tree = Self {
            tokens: Vec::new(),
            parent: Vec::new(),
            depth: Vec::new(),
            targets: Vec::new(),
            predictors: Vec::new(),
        };
        let mut children = std::collections::HashMap::new();
        let mut path = Vec::new();
        for (ctx, cont) in pairs {
            if ctx.is_empty() {
                return None;
            }
            path.clear();
            let mut at = ROOT;
            let inputs = ctx.len() + cont.len() - 1;
            for (d, &tok) in ctx.iter().chain(cont).take(inputs).enumerate() {
                at = *children.entry((at, tok)).or_insert_with(|| {
                    tree.tokens.push(tok);
                    tree.parent.push(at);
                    tree.depth.push(d);
                    tree.tokens.len() as u32 - 1
                });
                path.push(at);
            }
            tree.targets.extend_from_slice(cont);
            tree.predictors
                .extend((0..cont.len()).map(|j| path[ctx.len() - 1 + j]));
        }
        Some(tree)
    }

    /// Tokens to forward.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The scored tokens: every continuation's, choices in order.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }
}

/// Several documents' trees laid out for one forward with nothing cached.
pub struct Packed {
    pub span: Span,
    pub tokens: Vec<u32>,
    /// Documents' targets in order.
    pub targets: Vec<u32>,
    /// For each target, its row among the span's output rows.
    pub rows: Vec<u32>,
    /// Tokens each document added to the forward (its tree's nodes less
    /// those an earlier document of the pack brought).
    pub doc_tokens: Vec<usize>,
}

impl Span {
    /// Documents' trees laid out for one forward with nothing cached, each
    /// node at its depth's position, merged into one forest: a node whose
    /// parent and token another document's tree already brought (the BOS
    /// token, `Question:`, a repeated context) is forwarded once. Its
    /// hidden state is the same either way — it sees only its ancestors —
    /// so documents still never see anything but their own prefixes. The
    /// output rows are the nodes that predict a target, each once however
    /// many targets (of however many documents) it predicts.
    pub fn packed(docs: &[&DocTree]) -> Result<Packed> {
        let (mut positions, mut parent, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
        let (mut predictors, mut targets, mut doc_tokens) = (Vec::new(), Vec::new(), Vec::new());
        let mut node_of = std::collections::HashMap::new();
        let mut here = Vec::new();
        for tree in docs {
            let before = tokens.len();
            here.clear();
            for ((&tok, &p), &depth) in tree.tokens.iter().zip(&tree.parent).zip(&tree.depth) {
                // Parents come first, so `here` already maps `p`.
                let up = if p == ROOT { ROOT } else { here[p as usize] };
                let node = *node_of.entry((up, tok)).or_insert_with(|| {
                    tokens.push(tok);
                    positions.push(depth);
                    parent.push(up);
                    tokens.len() as u32 - 1
                });
                here.push(node);
            }
            predictors.extend(tree.predictors.iter().map(|&p| here[p as usize]));
            targets.extend_from_slice(&tree.targets);
            doc_tokens.push(tokens.len() - before);
        }
        let n = tokens.len();
        let mut row_of = vec![ROOT; n];
        for &p in &predictors {
            row_of[p as usize] = 0;
        }
        let mut outputs = Vec::new();
        for (i, r) in row_of.iter_mut().enumerate() {
            if *r == 0 {
                *r = outputs.len() as u32;
                outputs.push(i as u32);
            }
        }
        let rows = predictors.iter().map(|&p| row_of[p as usize]).collect();
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let n_out = outputs.len();
        Ok(Packed {
            span: Self {
                past: 0,
                positions,
                parent,
                gather: Some(Tensor::from_vec(ids, n, &Device::Cpu)?),
                outputs: Some(Tensor::from_vec(outputs, n_out, &Device::Cpu)?),
            },
            tokens,
            targets,
            rows,
            doc_tokens,
        })
    }
}
