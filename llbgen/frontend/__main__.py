from llbgen.frontend import main

raise SystemExit(main())
