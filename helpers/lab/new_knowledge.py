"""Fill-in prompts for made-up facts: are they new to the model, and recalled after training
(notebook 07).
"""

from __future__ import annotations

import re

from ..modeling import input_device


def check_not_verbatim(prompts: list[str], training_text: str) -> None:
    """Raise ``ValueError`` naming every prompt that occurs word for word in ``training_text``.

    Comparison ignores case and runs of whitespace, so a prompt cannot pass by a changed line break.
    A recall test on such a prompt would measure copying, not knowledge.
    """
    def norm(text: str) -> str:
        return re.sub(r"\s+", " ", text).strip().lower()

    haystack = norm(training_text)
    found = [p for p in prompts if norm(p) in haystack]
    if found:
        raise ValueError("these prompts occur verbatim in the training text; rephrase them: " + "; ".join(found))


def answer_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """Return the mean log-probability per token that ``model`` gives ``answer`` right after ``prompt``.

    The answer is tokenized as it follows the prompt (with its leading space), so the tokens are the
    ones generation would have to produce.
    """
    import torch  # deferred: heavy

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ValueError(f"cannot split the answer {answer!r} from the prompt {prompt!r} at a token boundary")
    device = input_device(model)
    ids = torch.tensor([full_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    log_probs = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[len(prompt_ids) - 1:]
    return picked.mean().item()


def recall(model, tokenizer, items: list[tuple[str, str]], max_new_tokens: int = 6) -> dict:
    """Ask ``model`` to complete each ``(prompt, answer)`` and score it.

    Greedy decoding of ``max_new_tokens``, all prompts in one left-padded batch; a hit is a
    continuation whose first word (letters only, case ignored) equals the answer's first word. Returns ``{"hits": n, "total": n, "accuracy": ...,
    "mean_logprob": ..., "rows": [{"prompt", "answer", "completion", "hit", "logprob"}, ...]}``.
    """
    import torch  # deferred: heavy

    if not items:
        raise ValueError("recall needs at least one (prompt, answer) pair")
    device = input_device(model)
    was_training = model.training
    model.eval()
    # all prompts in one batch, padded on the left so that each continues from its own last token:
    # generating a few tokens costs about as much for eight prompts as for one
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        inputs = tokenizer([prompt for prompt, _ in items], return_tensors="pt", padding=True,
                           add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    completions = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    rows = []
    for (prompt, answer), completion in zip(items, completions, strict=True):
        first = re.findall(r"[a-z]+", completion.lower())[:1]
        hit = bool(first) and first[0] == re.findall(r"[a-z]+", answer.lower())[0]
        rows.append({"prompt": prompt, "answer": answer.strip(), "completion": completion, "hit": hit,
                     "logprob": answer_logprob(model, tokenizer, prompt, answer)})
    if was_training:
        model.train()
    hits = sum(r["hit"] for r in rows)
    return {"hits": hits, "total": len(rows), "accuracy": hits / len(rows),
            "mean_logprob": sum(r["logprob"] for r in rows) / len(rows), "rows": rows}
