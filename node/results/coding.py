"""The coded concepts our objects use, and the mapping between the pipelines' input vocabulary and codes.

Standard codes come from ``pydicom.sr.codedict.codes`` (or are named here with their scheme and source); where no
standard code fits, a project-private code in the ``99AINODE`` scheme is defined here, with the reason, and declared
in the SR's Coding Scheme Identification Sequence. Nothing else.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# Private coding scheme: "99" prefix per PS3.16 section 8.2 for locally defined schemes.
PRIVATE_SCHEME = "99AINODE"
PRIVATE_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="DICOM AI node local codes",
    responsible_organization="dicom-ai-node project",
)

# --- standard codes -------------------------------------------------------------------------------------------
# CID 100 has no "AI analysis of radiograph"; the generic imaging procedure is the honest choice.
PROCEDURE_REPORTED = codes.SCT.ImagingProcedure  # (363679005, SCT, "Imaging procedure")
# Finding type of every box the detector emits (TID 1410 row "Finding"); the head's class is reported separately.
FINDING_TYPE = codes.SCT.Lesion  # (52988006, SCT, "Lesion")
# Concept name of the stage-2 class as a qualitative evaluation; its value is the pipeline's CodedClass as-is.
# DCM "Finding" (121071) is already taken by the finding type, so the SNOMED attribute "Classification" names it.
CLASSIFICATION = codes.SCT.Classification  # (278201002, SCT, "Classification (attribute)")
# Stage-2 probability of the reported class, and the stage-1 detector score (how sure the detector is a lesion
# is there at all: the CAD concept "Certainty of Finding").
PROBABILITY = codes.DCM.Probability  # (122157, DCM, "Probability")
DETECTION_SCORE = codes.DCM.CertaintyOfFinding  # (111012, DCM, "Certainty of Finding")
# Both are dimensionless in [0, 1]: UCUM "1" (CID 7181 "no units"); "{probability}" is not in CID 7181.
UNITLESS = codes.UCUM.NoUnits
# 3D findings: the long-axis diameter of the nodule on the axial plane (CID 7470 "Linear Measurements"), in mm.
LONG_AXIS = codes.SCT.LongAxis  # (103339001, SCT, "Long axis")
MILLIMETRE = codes.UCUM.Millimeter  # (mm, UCUM, "mm")
# The score cut-off below which the detector reported nothing.
DETECTION_THRESHOLD = codes.DCM.ThresholdValue  # (122411, DCM, "Threshold Value")
# Study-level "was a lesion found" statement: Presence of property = Present / Absent.
PRESENCE = codes.DCM.PresenceOfProperty  # (121052, DCM, "Presence of property")
PRESENT = codes.SCT.Present  # (52101004, SCT, "Present")
# ... and when no input could be analysed (each is listed as "Instance not analysed" with its reason): neither
# present nor absent, but not evaluated.
NOT_EVALUATED = codes.SCT.NotEvaluated  # (373121007, SCT, "Not Evaluated")
ABSENT = codes.SCT.Absent  # (272519000, SCT, "Absent")
# "labs" as a whole (e.g. EHR unreachable): LOINC's section code for laboratory data.
LABS = codes.LN.RelevantDiagnosticTestsAndOrLaboratoryData  # (30954-2, LN)
# TID 1500 row 10, the report-level container of study-level statements (presence, EHR status, missing inputs,
# instances not analysed); not in pydicom's codedict. Measurement groups would be wrong for them: a group without a
# region is something viewers try to draw (OHIF 3 fails on it), and TID 1500 asks only for one of rows 6, 8 or 10.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# Document title of a report with nothing measured (no findings). TID 1500's titles (CID 7021, extensible) all say
# "Measurement Report", and OHIF 3 opens a 126000 "Imaging Measurement Report" in its measurement viewport, which
# fails on one without measurements; any other title it shows as text, which is what "nothing found" is best read as.
NOTHING_MEASURED_TITLE = codes.LN.DiagnosticImagingReport  # (18748-4, LN, "Diagnostic Imaging Report"), CID 7000

# Free-text EHR notes: the node reads every plain-text DocumentReference, whatever its type, so the generic LOINC
# document type "Note" (34109-9, LOINC Document Ontology; the default type of FHIR note writers) names what it read.
# DCM "Physician Note" (121173) would claim an author the node does not check. LOINC codes are not in codedict.
NOTES = Code("34109-9", "LN", "Note")
# The image itself as an input.
IMAGE = codes.DCM.SourceImage  # (121324, DCM, "Source image")

# --- IHE AI Results: the algorithm in the Contributing Equipment Sequence ---------------------------------------
# IHE RAD AIR (Rev 1.1, 6.5.3.1 "General Result Encoding Requirements") asks every result object to describe the
# algorithm in the Contributing Equipment Sequence with Purpose of Reference (Newcode1, 99IHE, "Processing
# Algorithm"), an interim IHE code. DICOM has not assigned a standard one: CID 7005 "Contributing Equipment Purpose
# of Reference" (OID 1.2.840.10008.6.1.486) holds Acquisition, Processing, Modifying, De-identifying, Frame
# Extracting, Enhanced Multi-frame Conversion and Synthesizing Equipment and the digitizers, nothing for an
# algorithm (PS3.16 2024a as rendered in github.com/bvdh/dicom-terminology-in-fhir, ValueSet CID_7005 version
# 20240324; dcm4che's ContributingEquipmentPurposeOfReference lists the same). MONAI Deploy's writers use the IHE code.
IHE_SCHEME = "99IHE"
IHE_SCHEME_ITEM = CodingSchemeIdentificationItem(
    designator=IHE_SCHEME,
    name="IHE interim codes (AI Results profile)",
    responsible_organization="IHE International",
)
PROCESSING_ALGORITHM = Code("Newcode1", IHE_SCHEME, "Processing Algorithm")

# --- project-private codes ----------------------------------------------------------------------------------
# No standard concept says "this clinical input was (not) available to the AI": DCM "Source of Measurement" and
# SCT "Not performed" / "Unknown" describe measurements and procedures, not an algorithm's inputs.
INPUT_UNAVAILABLE = Code("AIN001", PRIVATE_SCHEME, "Clinical input unavailable")
INPUT_USED = Code("AIN002", PRIVATE_SCHEME, "Clinical input used")
# The outcome of the node's own EHR query. HL7's data-absent-reason codes describe one missing value and do not
# tell "patient not found" from "unreachable" or "timed out"; no DICOM, SNOMED CT or LOINC concept does.
EHR_STATUS = Code("AIN003", PRIVATE_SCHEME, "EHR query status")

# ClinicalContext.fhir_status values (pipelines/base.py) -> codes.
FHIR_STATUS_CODES: dict[str, Code] = {
    "ok": Code("AIN020", PRIVATE_SCHEME, "EHR data retrieved"),
    "patient-not-found": Code("AIN021", PRIVATE_SCHEME, "Patient not found in EHR"),
    "unreachable": Code("AIN022", PRIVATE_SCHEME, "EHR unreachable"),
    # the EHR answered, but not completely within budgets.fhir_seconds (e.g. a server trickling bytes)
    "timeout": Code("AIN023", PRIVATE_SCHEME, "EHR query exceeded its time budget"),
}

# An input instance of the study the run did not analyse: CODE "Instance not analysed" = the reason, with the IMAGE
# it is about (INFERRED FROM) and the decoder's words (TEXT). No standard concept says "this image was left out".
NOT_ANALYSED = Code("AIN030", PRIVATE_SCHEME, "Instance not analysed")
# The decoder's words are free text about the statement above: DCM "Comment" (CID 12101) says exactly that.
NOT_ANALYSED_DETAIL = codes.DCM.Comment  # (121106, DCM, "Comment")
# ExcludedInstance.reason values (pipelines/base.py) -> codes. Nothing standard names a DICOM decoding failure, nor an
# image outside an algorithm's intended use or unlike its training data: the nearest DCM concepts, "Outside operational
# limits of the device" (128619) and "Inappropriate for the device" (128618), are CID 800 Protocol Assertions about
# an acquisition protocol, and "Insufficient quality for interpretation" (110531, CID 9303) would blame the image.
EXCLUSION_REASON_CODES: dict[str, Code] = {
    "undecodable": Code("AIN040", PRIVATE_SCHEME, "Pixel data cannot be decoded"),
    "unreadable": Code("AIN041", PRIVATE_SCHEME, "Instance cannot be read"),
    # an attribute (modality, body part, view, photometric interpretation, size, pixel spacing) outside the
    # pipeline's declared intended use; the Comment names the attribute and what is intended
    "outside-intended-use": Code("AIN042", PRIVATE_SCHEME, "Image outside the algorithm's intended use"),
    # the pipeline's own out-of-distribution check: the image is unlike the images the model was trained on
    "out-of-distribution": Code("AIN043", PRIVATE_SCHEME, "Image unlike the algorithm's training data"),
    # a 3D pipeline could not make the instance's series into a volume (too few slices, irregular spacing, missing
    # slices, gantry tilt, more than one stack); the Comment gives pipelines.common.volume's reason code and words
    "series-unusable": Code("AIN044", PRIVATE_SCHEME, "Series cannot be made into a volume"),
}


def input_code(token: str) -> Code:
    """Code for one input token of ``Finding.inputs_used`` / ``inputs_missing``: image, labs, labs:<loinc>, notes."""
    if token == "image":
        return IMAGE
    if token == "labs":
        return LABS
    if token == "notes":
        return NOTES
    if token.startswith("labs:") and len(token) > len("labs:"):
        loinc = token[len("labs:"):]
        # The LOINC long name is not known here (the token carries only the code); readers match on value+scheme.
        return Code(loinc, "LN", f"Laboratory result LOINC {loinc}")
    raise ValueError(f"unknown input token {token!r}")


def input_token(code: CodedConcept | Code) -> str:
    """Inverse of :func:`input_code`."""
    if code.scheme_designator == IMAGE.scheme_designator and code.value == IMAGE.value:
        return "image"
    if code.scheme_designator == NOTES.scheme_designator and code.value == NOTES.value:
        return "notes"  # before the LOINC lab codes: notes are a LOINC code too
    if code.scheme_designator == "LN":
        return "labs" if code.value == LABS.value else f"labs:{code.value}"
    raise ValueError(f"code {code.value}^{code.scheme_designator} is not an input code")


def _code_for(table: dict[str, Code], token: str, what: str, hint: str = "") -> Code:
    try:
        return table[token]
    except KeyError:
        raise ValueError(f"unknown {what} {token!r}{hint}") from None


def _token_for(table: dict[str, Code], code: CodedConcept | Code, what: str) -> str:
    for token, c in table.items():
        if c.value == code.value and c.scheme_designator == code.scheme_designator:
            return token
    raise ValueError(f"code {code.value}^{code.scheme_designator} is not an {what} code")


def fhir_status_code(status: str) -> Code:
    return _code_for(FHIR_STATUS_CODES, status, "fhir_status")


def fhir_status_token(code: CodedConcept | Code) -> str:
    return _token_for(FHIR_STATUS_CODES, code, "EHR status")


def exclusion_reason_code(reason: str) -> Code:
    return _code_for(EXCLUSION_REASON_CODES, reason, "exclusion reason",
                     f": use one of {', '.join(EXCLUSION_REASON_CODES)}")


def exclusion_reason_token(code: CodedConcept | Code) -> str:
    return _token_for(EXCLUSION_REASON_CODES, code, "exclusion reason")
