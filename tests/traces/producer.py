"""A producer's span, made with the OpenTelemetry Python SDK as a web
application would make one around the request that enqueues a job: prints
the W3C `traceparent` (and `tracestate`) the SDK's propagator injects,
one `name=value` a line.
"""

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import TraceState

provider = TracerProvider()
tracer = provider.get_tracer("shop")
with tracer.start_as_current_span("POST /orders", kind=SpanKind.PRODUCER) as span:
    # A vendor's entry, to see tracestate go along.
    context = span.get_span_context()
    state = TraceState([("shop", "checkout")])
    parent = trace.NonRecordingSpan(
        trace.SpanContext(context.trace_id, context.span_id, True, context.trace_flags, state)
    )
    carrier = {}
    propagate.inject(carrier, context=trace.set_span_in_context(parent))
    for name in ("traceparent", "tracestate"):
        print(f"{name}={carrier[name]}")
