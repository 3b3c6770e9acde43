"""The Ollama-API server the tests run is the product's (deploy/ollama_server.py, also `loraloop dev ollama`);
re-exported here under the name tests and benches import it by."""

from deploy.ollama_server import (  # noqa: F401
    ADAPTERS_REMOVED,
    EMBED_DIM,
    GGUF_QUANTIZE_REMOVED,
    LORAS_NOT_IMPLEMENTED,
    NO_EMBEDDINGS,
    SAFETENSORS_IMPORT_REFUSED,
    VERSION,
    OllamaTestServer,
    paraphrase,
    trigram_embedding,
)
