# Weft: one image for the control plane, sidecars, the edge and the shop example's apps.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/weft
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY control ./control
COPY ca ./ca
COPY mesh_ctl ./mesh_ctl
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /var/lib/weft --create-home weft
COPY examples ./examples

USER weft
# 15000 admin, 15001 outbound, 15006 inbound (mTLS), 15010 control plane
EXPOSE 15000 15001 15006 15010
ENTRYPOINT ["meshctl"]
CMD ["--help"]
