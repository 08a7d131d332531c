# The `scale` profile's front door: nginx with docker/nginx.conf, in front of the orchestrator replicas.
#
#   docker build -f docker/nginx.Dockerfile -t triton-faceswap-nginx:0.1.0 .
#
# NGINX_IMAGE: an nginx image that includes /etc/nginx/conf.d/*.conf in its http { } block.

ARG NGINX_IMAGE=nginx:1.28.0-alpine
FROM ${NGINX_IMAGE}
COPY docker/nginx.conf /etc/nginx/conf.d/default.conf
EXPOSE 8080
