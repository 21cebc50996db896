# syntax=docker/dockerfile:1.7
#
# Bulwark's container image.
#
#   docker build -t bulwark:0.1.0 .                          CPU image (the default target)
#   docker build --target runtime-cuda -t bulwark:0.1.0-cuda .   GPU image (CUDA 12, cuDNN 9)
#
# The runtime runs the TypeScript sources directly with Node.js 24's type stripping, so its
# base must carry Node.js 24 (`npm ci --omit=dev` leaves out the `node` devDependency).
# The CPU image is distroless: no shell, no package manager; it runs as the numeric non-root
# user 65532, all its files belong to root and are read-only to the process, and it works on
# a read-only root file system: the only writable paths are the audit trail and the state
# folder, declared as volumes. No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the
# admin port (9464). Models are copied in (models/, each signed with `bulwark model sign`
# before the build, see README.md, Deployment); configuration, policies and keys are mounted at
# /etc/bulwark at run time, never baked in.
#
# Base images are pinned by digest (Renovate or `crane digest IMAGE:TAG` to update).

ARG NODE_BUILD_IMAGE=docker.io/library/node:24-bookworm-slim@sha256:d6aa754f16b3197301076f047b5def2f02ea1dbbc2ca920407d46d7ec7f87b20
ARG NODE_RUNTIME_IMAGE=gcr.io/distroless/nodejs24-debian12:nonroot@sha256:14d42e2511532589a7c7e01a753667a74fcc96266e137e8125006b87b0c32d0a
ARG CUDA_RUNTIME_IMAGE=docker.io/nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:ac55d124da4882b497f732d8dfd9a702d5447a5f29d08d56da6f64f0a1eb34bc

# ---- deps: production dependencies exactly as the lockfile says, no install scripts ----
# onnxruntime-node ships its CPU binaries in the package; .npmrc skips its CUDA download.
FROM ${NODE_BUILD_IMAGE} AS deps
WORKDIR /app
ENV NODE_ENV=production \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --ignore-scripts \
 && npm cache clean --force

# ---- app: the files the gateway runs, and the mount points of what is mounted at run time ----
FROM ${NODE_BUILD_IMAGE} AS app
WORKDIR /app
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY models ./models
COPY policies ./policies
COPY proto ./proto
RUN mkdir -p /etc/bulwark/policies /etc/bulwark/tls /etc/bulwark/audit-key /etc/bulwark/model-signing \
             /var/lib/bulwark/audit /var/lib/bulwark/state \
 && chmod -R a+rX,go-w /app /etc/bulwark \
 && chown -R 65532:65532 /var/lib/bulwark \
 && chmod 0700 /var/lib/bulwark/audit /var/lib/bulwark/state

# ---- GPU dependencies: the same lockfile, plus onnxruntime-node's CUDA 12 execution provider ----
# Only onnxruntime-node's own install script runs (npm rebuild), fetching its CUDA files
# from the onnxruntime release feed; nothing else may run scripts.
FROM ${NODE_BUILD_IMAGE} AS deps-cuda
WORKDIR /app
ENV NODE_ENV=production \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts \
 && ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --foreground-scripts \
 && npm cache clean --force

# ---- runtime-cuda: the GPU variant (docker build --target runtime-cuda) ----
# CUDA 12 and cuDNN 9 from NVIDIA's runtime image, Node.js 24 copied from the official image.
# This base is Ubuntu, so it does have a shell and apt: keep the Falco rules (k8s/falco/) on.
# Run it with the NVIDIA container runtime and a GPU resource limit, and set
# models.defaults.executionProviders: [cuda, cpu] in bulwark.yaml (README.md, Deployment).
FROM ${CUDA_RUNTIME_IMAGE} AS runtime-cuda
COPY --from=deps-cuda /usr/local/bin/node /usr/local/bin/node
COPY --from=app /app /app
COPY --from=deps-cuda /app/node_modules /app/node_modules
COPY --from=app /etc/bulwark /etc/bulwark
COPY --from=app /var/lib/bulwark /var/lib/bulwark
WORKDIR /app
ENV NODE_ENV=production
USER 65532:65532
EXPOSE 8443 9464
VOLUME ["/var/lib/bulwark/audit", "/var/lib/bulwark/state"]
ENTRYPOINT ["/usr/local/bin/node", "/app/bin/bulwark.js"]
CMD ["serve", "--config", "/etc/bulwark/bulwark.yaml"]

# ---- runtime: the CPU image (the default target, last) ----
FROM ${NODE_RUNTIME_IMAGE} AS runtime
COPY --from=app /app /app
COPY --from=deps /app/node_modules /app/node_modules
COPY --from=app /etc/bulwark /etc/bulwark
COPY --from=app /var/lib/bulwark /var/lib/bulwark
WORKDIR /app
ENV NODE_ENV=production
USER 65532:65532
# 8443: the API (mTLS, OIP v2). 9464: admin (health, readiness, metrics).
EXPOSE 8443 9464
VOLUME ["/var/lib/bulwark/audit", "/var/lib/bulwark/state"]
ENTRYPOINT ["/nodejs/bin/node", "/app/bin/bulwark.js"]
CMD ["serve", "--config", "/etc/bulwark/bulwark.yaml"]
