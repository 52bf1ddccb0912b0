"""llbgen: container image builds written as Python functions, compiled to BuildKit LLB."""
