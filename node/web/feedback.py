"""Readers' feedback on the AI's results, from the study page's forms: acknowledge the study's result, confirm a
finding, or dismiss it as a false positive (with an optional reason).

Readers and admins may give it; each post carries the session's CSRF token and ends in a redirect back to the study
page, which shows every reader's current verdict. The store records the verdict with its audit record
(node.feedback, Store.record_feedback); the admin page and /metrics show the rates it feeds.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from node.feedback import FeedbackError, parse_verdict
from node.web.auth import Principal
from node.web.pages import _check_csrf, _context, person

router = APIRouter()


@router.post("/study/{study_uid}/feedback")
def give_feedback(request: Request, study_uid: str, verdict: str = Form(""), finding_id: str = Form(""),
                        reason: str = Form(""), csrf: str = Form(""),
                        user: Principal = Depends(person)) -> Response:
    _check_csrf(user, csrf)
    try:
        checked = parse_verdict(verdict, for_finding=bool(finding_id))
    except FeedbackError as exc:
        raise HTTPException(400, str(exc)) from None
    store = _context(request).open_store()
    try:
        if store.study(study_uid) is None:
            raise HTTPException(404, f"no study {study_uid} on this node: see the worklist at /")
        store.record_feedback(study_uid, checked, user.name, finding_id=finding_id or None, reason=reason,
                              source=request.client.host if request.client else "")
    except FeedbackError as exc:
        raise HTTPException(400, str(exc)) from None
    finally:
        store.close()
    return RedirectResponse(f"/study/{study_uid}#feedback", status_code=303)
