"""img2cad for users: ``img2cad predict`` on image files and ``img2cad serve`` (a Gradio app),
both running a shipped model folder (``models/img2cad-small``)."""
