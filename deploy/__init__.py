"""How Triton and Qdrant run: locally without Docker (deploy.local), docker compose, Kubernetes."""
