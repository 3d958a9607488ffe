"""The shared kernel: what more than one stage needs, and nothing else.

Stages import only the kernel and themselves; the kernel imports only itself
(`tests/unit/test_architecture.py`). Importing it is cheap: its pure modules load no
FastStream, Kafka, Milvus, ONNX or HTTP library, and they are checked for that.

Pure:
- `events`: topic names, event models, deterministic ids, envelope headers (the contracts);
- `settings`: the settings sections every stage reads (`clinstream.settings` composes them);
- `errors`: the exception tree, one root;
- `identity`, `units`, `attachments`, `imaging`: patient keys, UCUM, note text, ImagingStudy ids;
- `rendering`: a resource in chart words, the text the index holds and drafts cite;
- `fhir_models`: the fhir.resources classes every stage validates with;
- `openapi`: the OpenAPI builders of every HTTP service;
- `writeback`: what alert and draft write-back share (the patient as the EHR knows them, Provenance);
- `drugs`: generic drug names and classes in free text;
- `replay`: which dead letters to replay, and a corrected one;
- `hl7v2`: the HL7 v2 parser, datatypes and segment writer;
- `native`: the loader of the compiled parser and mappers.

Adapters, named for their technology:
- `kafka`: consumer, commit-after-side-effect and dead-letter helpers of every stage;
- `replay_kafka`: reading a topic to its end and republishing dead letters;
- `onnx_session`: ONNX Runtime sessions, one provider choice for every model.
"""
